"""Per-issuer JWKS cache shared by every broker process.

- Keys are cached in process and mirrored in Redis, so one fetch serves every worker. Each
  cached or mirrored key set carries the fingerprint of the key source it came from: keys
  fetched from a source a reload replaced (or from a removed issuer that came back) are
  never used.
- An unknown `kid` may trigger a refresh, but at most one fetch per issuer per cooldown
  across all nodes (a Redis SET NX lock); unknown kids are then cached negatively, so random
  kids cannot turn Errand into a request amplifier.
- A failed refresh keeps the cached keys in use for `jwks_stale_seconds`; only a cold cache
  with an unreachable issuer is a (retryable) failure. The failure is recorded for the
  cooldown, so every worker then fails fast; a worker that finds another one's fetch really
  in flight waits for it, and never longer than the fetch deadline.
- Only configured URLs are fetched, and only where broker/identity/egress.py allows: nothing
  in a token (`jku`, `x5u`, `jwk`, `kid`, `iss`) causes egress.
- A `jwks_file` (a SPIFFE bundle kept current by spiffe-helper, say) is re-read like a fetch;
  inline keys (an agent's registered JWKS) are parsed once and never touch Redis or HTTP."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import jwt

from broker.clock import Clock
from broker.domain.models import TrustedIssuer
from broker.identity.errors import KeysUnavailable, UnknownKey
from broker.identity.jwks_fetch import (
    MAX_JWKS_BYTES,
    HttpJwksFetcher,
    JwksFetcher,
    read_jwks_file,
)
from errand_jose import ASYMMETRIC_ALGORITHMS, CURVE_ALGORITHMS, PRIVATE_JWK_MEMBERS

__all__ = ["MAX_JWKS_BYTES", "HttpJwksFetcher", "JwksCache", "JwksFetcher", "parse_jwks"]

log = logging.getLogger(__name__)

MAX_KEYS = 100
MAX_NEGATIVE_KIDS = 1024
SOURCE_MEMBER = "errand_key_source"  # added to mirrored JWKS: which key source it came from
# How long after its fetch deadline a fetch in flight may take to write the mirror.
MIRROR_WRITE_SECONDS = 0.25
POLL_SECONDS = 0.05  # how often a waiting worker looks at the mirror again

# How another worker's fetch of this cooldown is going (broker/store/jwks_mirror.py).
FetchState = Literal["failed", "in_flight", "idle"]


def source_fingerprint(issuer: TrustedIssuer) -> str:
    return hashlib.sha256(repr(issuer.key_source).encode()).hexdigest()[:16]


def fetch_deadline(issuer: TrustedIssuer) -> float:
    """How long a fetch can be in flight, mirror write included (broker/identity/jwks_fetch.py
    bounds the whole fetch by fetch_timeout_seconds)."""
    return issuer.fetch_timeout_seconds + MIRROR_WRITE_SECONDS


class SharedJwksState(Protocol):
    """Cross-process JWKS mirror, refresh lock and fetch state (Redis in production)."""

    def load(self, issuer_id: str) -> tuple[str, float] | None: ...

    def store(
        self, issuer_id: str, jwks_json: str, fetched_at: float, ttl_seconds: int
    ) -> None: ...

    def try_lock_refresh(self, issuer_id: str, cooldown_seconds: int) -> bool:
        """Take the lock and mark the fetch in flight, atomically."""
        ...

    def mark_in_flight(self, issuer_id: str, cooldown_seconds: int) -> None: ...

    def record_failure(self, issuer_id: str, cooldown_seconds: int) -> None: ...

    def fetch_state(
        self, issuer_id: str, cooldown_seconds: int, fetch_deadline_seconds: float
    ) -> FetchState: ...

    def forget(self, issuer_id: str) -> None: ...


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str
    key: Any = field(repr=False)


@dataclass
class _Cached:
    keys: dict[str, VerificationKey]
    fetched_at: float
    source: str  # source_fingerprint of the issuer configuration the keys were fetched for
    negative: dict[str, float] = field(default_factory=dict)  # kid -> until


def _usable_use(jwk: dict[str, Any], issuer: TrustedIssuer) -> bool:
    use = jwk.get("use", "sig")
    # A SPIFFE trust bundle marks JWT-SVID keys "jwt-svid" (and X.509 roots "x509-svid").
    return use == "sig" or (use == "jwt-svid" and issuer.profile == "spiffe")


def parse_jwks(doc: dict[str, Any], issuer: TrustedIssuer) -> dict[str, VerificationKey]:
    """Public signing keys by kid; each key is bound to exactly one algorithm."""
    out: dict[str, VerificationKey] = {}
    keys = doc.get("keys", [])
    if not isinstance(keys, list):
        return out
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict) or not _usable_use(jwk, issuer):
            continue
        kty = jwk.get("kty")
        alg = jwk.get("alg")
        if alg is None:
            if kty in ("EC", "OKP"):
                alg = CURVE_ALGORITHMS.get(str(jwk.get("crv")))
            elif kty == "RSA":
                rsa_algs = [a for a in issuer.algorithms if a.startswith(("RS", "PS"))]
                alg = rsa_algs[0] if len(rsa_algs) == 1 else "RS256"
        if alg not in ASYMMETRIC_ALGORITHMS or alg not in issuer.algorithms:
            continue
        public = {k: v for k, v in jwk.items() if k not in PRIVATE_JWK_MEMBERS}
        try:
            key = jwt.PyJWK(public, algorithm=alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if kty == "RSA" and getattr(key, "key_size", 0) < 2048:
            continue
        kid = jwk.get("kid")
        kid = kid if isinstance(kid, str) else ""
        out.setdefault(kid, VerificationKey(kid=kid, alg=str(alg), key=key))
    return out


class JwksCache:
    """`sleep` and `monotonic` time the wait for another worker's fetch (tests inject them)."""

    def __init__(
        self,
        fetcher: JwksFetcher,
        shared: SharedJwksState,
        clock: Clock,
        *,
        sleep: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._shared = shared
        self._clock = clock
        self._sleep = sleep or time.sleep
        self._monotonic = monotonic or time.monotonic
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._local_cooldown: dict[str, float] = {}
        self._inline: dict[str, tuple[str, dict[str, VerificationKey]]] = {}
        self._fetch_now: set[str] = set()  # issuers whose key source a reload just changed
        self.fetches = 0  # observable for tests and metrics

    def forget(self, issuer_id: str) -> None:
        """Drop cached keys, here and in the shared mirror, when a reload changed where an
        issuer's keys come from (or the issuer is new to this process's configuration)."""
        with self._lock:
            self._cache.pop(issuer_id, None)
            self._inline.pop(issuer_id, None)
            self._local_cooldown.pop(issuer_id, None)
            # One fetch from the new source may skip the cooldown (an operator's reload, not
            # something a token can trigger): the old source's lock must not delay the new keys.
            self._fetch_now.add(issuer_id)
        try:
            self._shared.forget(issuer_id)
        except Exception:  # the fingerprint still keeps the old keys out
            log.warning("could not drop the mirrored JWKS", extra={"issuer": issuer_id})

    def _inline_key(self, issuer: TrustedIssuer, kid: str | None) -> VerificationKey:
        assert issuer.jwks_json is not None
        cached = self._inline.get(issuer.id)
        if cached is None or cached[0] != issuer.jwks_json:
            cached = (issuer.jwks_json, parse_jwks(json.loads(issuer.jwks_json), issuer))
            self._inline[issuer.id] = cached
        found = self._pick(_Cached(keys=cached[1], fetched_at=0.0, source=""), kid)
        if found is None:
            raise UnknownKey(
                "the token's key is not registered for this identity", debug=f"kid={kid!r}"[:300]
            )
        return found

    def key_for(self, issuer: TrustedIssuer, kid: str | None) -> VerificationKey:
        if issuer.jwks_json is not None:
            with self._lock:
                return self._inline_key(issuer, kid)
        now = self._clock.now()
        source = source_fingerprint(issuer)
        with self._lock:
            cached = self._cache.get(issuer.id)
            if cached is not None and cached.source != source:
                cached = None  # fetched for a configuration that is no longer this one
                self._cache.pop(issuer.id, None)
            if cached is None or kid not in cached.keys:
                cached = self._adopt_shared(issuer, source) or cached
            if cached is not None:
                fresh = now - cached.fetched_at < issuer.jwks_max_age_seconds
                found = self._pick(cached, kid)
                if found is not None and fresh:
                    return found
                if found is None and cached.negative.get(kid or "", 0) > now and fresh:
                    raise UnknownKey("the token's key is not in the issuer's key set")
            cached = self._refresh(issuer, cached, now, source)
            found = self._pick(cached, kid)
            if found is None:
                if len(cached.negative) >= MAX_NEGATIVE_KIDS:
                    cached.negative.clear()
                cached.negative[kid or ""] = now + issuer.refresh_cooldown_seconds
                raise UnknownKey(
                    "the token's key is not in the issuer's key set", debug=f"kid={kid!r}"[:300]
                )
            return found

    @staticmethod
    def _pick(cached: _Cached, kid: str | None) -> VerificationKey | None:
        if kid is not None:
            return cached.keys.get(kid)
        # No kid: usable only when the issuer publishes exactly one key.
        return next(iter(cached.keys.values())) if len(cached.keys) == 1 else None

    def _adopt_shared(self, issuer: TrustedIssuer, source: str) -> _Cached | None:
        try:
            mirrored = self._shared.load(issuer.id)
        except Exception:  # a Redis fault must not break verification from local keys
            log.warning("jwks shared cache unavailable", extra={"issuer": issuer.id})
            return None
        if mirrored is None:
            return None
        current = self._cache.get(issuer.id)
        jwks_json, fetched_at = mirrored
        if current is not None and current.source == source and current.fetched_at >= fetched_at:
            return current
        try:
            doc = json.loads(jwks_json)
            if not isinstance(doc, dict) or doc.get(SOURCE_MEMBER) != source:
                return None  # fetched from a key source that a reload replaced
            keys = parse_jwks(doc, issuer)
        except (ValueError, AttributeError):
            return None
        adopted = _Cached(keys=keys, fetched_at=fetched_at, source=source)
        self._cache[issuer.id] = adopted
        return adopted

    def _may_fetch(self, issuer: TrustedIssuer, now: float) -> bool:
        cooldown = issuer.refresh_cooldown_seconds
        try:
            if issuer.id in self._fetch_now:
                self._fetch_now.discard(issuer.id)
                self._shared.mark_in_flight(issuer.id, cooldown)
                return True
            return self._shared.try_lock_refresh(issuer.id, cooldown)
        except Exception:
            # Redis is down: fall back to a per-process cooldown.
            if self._local_cooldown.get(issuer.id, 0) > now:
                return False
            self._local_cooldown[issuer.id] = now + cooldown
            return True

    def _wait_for_fetch(self, issuer: TrustedIssuer, source: str) -> _Cached | None:
        """Another worker holds the refresh lock and we have no keys. Wait only while its
        fetch is really in flight: stop as soon as its keys are mirrored (adopt them), it
        recorded a failure, or it is no longer marked in flight; never past the deadline."""
        give_up = self._monotonic() + fetch_deadline(issuer)
        while True:
            adopted = self._adopt_shared(issuer, source)
            if adopted is not None:
                return adopted
            try:
                state = self._shared.fetch_state(
                    issuer.id, issuer.refresh_cooldown_seconds, fetch_deadline(issuer)
                )
            except Exception:
                return None
            if state != "in_flight" or self._monotonic() >= give_up:
                return None
            self._sleep(POLL_SECONDS)

    def _record_failure(self, issuer: TrustedIssuer) -> None:
        try:
            self._shared.record_failure(issuer.id, issuer.refresh_cooldown_seconds)
        except Exception:  # Redis down: the per-process cooldown still bounds our fetches
            log.warning("could not record the JWKS fetch failure", extra={"issuer": issuer.id})

    def _refresh(
        self, issuer: TrustedIssuer, cached: _Cached | None, now: float, source: str
    ) -> _Cached:
        if not self._may_fetch(issuer, now):
            if cached is not None and now - cached.fetched_at < issuer.jwks_stale_seconds:
                return cached
            if cached is None:
                adopted = self._wait_for_fetch(issuer, source)
                if adopted is not None:
                    return adopted
            raise KeysUnavailable(
                "the issuer's keys are unavailable; retry shortly",
                debug="refresh cooldown: the last fetch failed or another worker is fetching",
            )
        try:
            self.fetches += 1
            doc = read_jwks_file(issuer) if issuer.jwks_file else self._fetcher.fetch(issuer)
            keys = parse_jwks(doc, issuer)
            if not keys:
                raise KeysUnavailable(
                    "the issuer's keys are unavailable", debug="JWKS has no usable keys"
                )
        except KeysUnavailable as err:
            # Normally one such line per issuer per cooldown, fleet-wide: the failure record
            # keeps the other workers from fetching (and logging) until the cooldown ends.
            self._record_failure(issuer)
            if cached is not None and now - cached.fetched_at < issuer.jwks_stale_seconds:
                log.warning(
                    "jwks refresh failed; serving cached keys",
                    extra={"issuer": issuer.id, "debug": err.debug},
                )
                return cached
            log.warning(
                "jwks fetch failed; the issuer's tokens are refused (503) until the cooldown ends",
                extra={"issuer": issuer.id, "debug": err.debug},
            )
            raise
        fresh = _Cached(keys=keys, fetched_at=now, source=source)
        self._cache[issuer.id] = fresh
        try:
            mirrored = {**doc, SOURCE_MEMBER: source}
            self._shared.store(issuer.id, json.dumps(mirrored), now, issuer.jwks_stale_seconds)
        except Exception:
            log.warning("could not mirror JWKS to Redis", extra={"issuer": issuer.id})
        return fresh
