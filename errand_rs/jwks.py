"""The broker's JWKS, fetched from one configured URL and cached in process.

- Only the configured `jwks_uri` is ever fetched: nothing in a token (`jku`, `x5u`, `jwk`,
  `kid`, `iss`) causes an outbound request.
- Cached keys are refreshed after `cache_seconds` (or the server's shorter `max-age`, so an
  emergency key removal reaches us as soon as the broker wants it to).
- An unknown `kid` triggers a refresh at most once per `refresh_cooldown_seconds`, so random
  kids cannot turn a resource server into a request amplifier against the broker.
- A failed refresh keeps the cached keys; only a cold cache with an unreachable broker fails.
- Each key is bound to one algorithm (its JWK `alg`, or the one its curve implies), from an
  asymmetric allow-list: never `none`, never HMAC (RFC 8725 §3.1)."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from errand_jose import PRIVATE_JWK_MEMBERS as _PRIVATE_MEMBERS
from errand_rs._http import HttpError, ProcessSession, bounded_get
from errand_rs.errors import InvalidToken, KeysUnavailable

log = logging.getLogger("errand_rs.jwks")

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
MAX_KID_LENGTH = 256
_CURVE_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "Ed25519": "EdDSA"}
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d{1,9})\s*(?:,|$)", re.IGNORECASE)
# A failed first fetch is retried this often, whatever the cooldown: a cold verifier has no
# keys at all, so waiting a whole cooldown would reject every request in the meantime.
COLD_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str
    key: Any = field(repr=False)


def parse_jwks(doc: Any, algorithms: Iterable[str]) -> dict[str, VerificationKey]:
    """Public signing keys by kid; keys that are unusable or not allowed are skipped."""
    allowed = set(algorithms)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("JWKS has no keys list")
    out: dict[str, VerificationKey] = {}
    for jwk in doc["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        kty = jwk.get("kty")
        if (
            not isinstance(kid, str)
            or not kid
            or len(kid) > MAX_KID_LENGTH
            or kty not in ("EC", "RSA", "OKP")
        ):
            continue  # `oct` (HMAC) keys are never usable
        alg = jwk.get("alg")
        if alg is None and kty in ("EC", "OKP"):
            alg = _CURVE_ALGORITHMS.get(str(jwk.get("crv")))
        if alg not in allowed:
            continue
        public = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
        try:
            key = jwt.PyJWK(public, algorithm=alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if kty == "RSA" and getattr(key, "key_size", 0) < 2048:
            continue
        out.setdefault(kid, VerificationKey(kid=kid, alg=str(alg), key=key))
    return out


def _max_age(headers: Any) -> float | None:
    value = headers.get("Cache-Control") if headers is not None else None
    if not isinstance(value, str):
        return None
    match = _MAX_AGE.search(value)
    return float(match.group(1)) if match else None


class JwksCache:
    def __init__(
        self,
        jwks_uri: str,
        *,
        algorithms: Iterable[str],
        cache_seconds: float,
        refresh_cooldown_seconds: float,
        timeout_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_uri = jwks_uri
        self._algorithms = tuple(algorithms)
        self._cache_seconds = cache_seconds
        self._cooldown = refresh_cooldown_seconds
        self._timeout = timeout_seconds
        self._monotonic = monotonic
        self._session = ProcessSession()
        self._keys: dict[str, VerificationKey] | None = None
        self._expires_at = -math.inf  # monotonic time after which the key set is refreshed
        self._last_attempt = -math.inf
        self._lock = threading.Lock()
        self.fetches = 0  # attempts, observable for tests and metrics

    def key_for(self, kid: str) -> VerificationKey:
        keys = self._keys
        if keys is not None and kid in keys:
            if self._monotonic() >= self._expires_at:
                # Stale: one thread refreshes, the others go on with the keys they have. A
                # refreshed set without this kid (an emergency removal) refuses the token.
                self._refresh(blocking=False, unknown_kid=False)
                keys = self._keys or {}
            found = keys.get(kid)
            if found is None:
                raise InvalidToken(
                    "The access token's signing key is unknown.", reason="unknown_kid"
                )
            return found
        self._refresh(blocking=True, unknown_kid=True)
        keys = self._keys
        if keys is None:
            raise KeysUnavailable()
        found = keys.get(kid)
        if found is None:
            raise InvalidToken("The access token's signing key is unknown.", reason="unknown_kid")
        return found

    def prefetch(self) -> bool:
        """Fetch the keys now (at start-up, say); False if the broker could not be reached."""
        self._refresh(blocking=True, unknown_kid=True)
        return self._keys is not None

    def _refresh(self, *, blocking: bool, unknown_kid: bool) -> None:
        """Fetch the key set when it is due (expired, or a failed fetch's retry time has come),
        or for an unknown kid at most once per cooldown. The cooldown bounds only the
        refetches that tokens can cause; it never delays a scheduled refresh."""
        if not self._lock.acquire(blocking=blocking):
            return
        try:
            now = self._monotonic()
            due = now >= self._expires_at
            if not due and not (unknown_kid and now - self._last_attempt >= self._cooldown):
                return  # fresh, or someone fetched (or failed to) a moment ago: bounded egress
            self._last_attempt = now
            self.fetches += 1
            try:
                body, headers = bounded_get(
                    self._session.get(),
                    self.jwks_uri,
                    timeout=self._timeout,
                    max_bytes=MAX_JWKS_BYTES,
                    headers={"Accept": "application/json"},
                )
                keys = parse_jwks(json.loads(body), self._algorithms)
            except (HttpError, ValueError) as err:
                log.warning(
                    "errand_rs: JWKS refresh from %s failed (%s); %s",
                    self.jwks_uri,
                    err,
                    "keeping the cached keys" if self._keys is not None else "no keys yet",
                )
                # Retry later, not on every request: soon when we have no keys at all, after
                # the cooldown when the cached keys can go on serving.
                retry = (
                    min(self._cooldown, COLD_RETRY_SECONDS)
                    if self._keys is None
                    else max(self._cooldown, COLD_RETRY_SECONDS)
                )
                self._expires_at = now + retry
                return
            ttl = self._cache_seconds
            max_age = _max_age(headers)
            if max_age is not None:
                ttl = min(ttl, max(max_age, self._cooldown))
            self._keys = keys
            self._expires_at = now + ttl
        finally:
            self._lock.release()
