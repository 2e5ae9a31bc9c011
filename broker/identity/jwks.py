"""Per-issuer JWKS cache shared by every broker process.

- Keys are cached in process and mirrored in Redis, so one fetch serves every worker.
- An unknown `kid` may trigger a refresh, but at most one fetch per issuer per cooldown
  across all nodes (a Redis SET NX lock); unknown kids are then cached negatively, so random
  kids cannot turn Errand into a request amplifier.
- A failed refresh keeps the cached keys in use for `jwks_stale_seconds`; only a cold cache
  with an unreachable issuer is a (retryable) failure.
- Only configured URLs are fetched: nothing in a token (`jku`, `x5u`, `jwk`, `kid`, `iss`)
  causes egress.
- A `jwks_file` (a SPIFFE bundle kept current by spiffe-helper, say) is re-read like a fetch;
  inline keys (an agent's registered JWKS) are parsed once and never touch Redis or HTTP."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
import requests

from broker.clock import Clock
from broker.domain.models import TrustedIssuer
from broker.identity.errors import KeysUnavailable, UnknownKey
from broker.tokens.algorithms import ASYMMETRIC_ALGORITHMS, CURVE_ALGORITHMS

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
MAX_NEGATIVE_KIDS = 1024
SOURCE_MEMBER = "errand_key_source"  # added to mirrored JWKS: which key source it came from


def source_fingerprint(issuer: TrustedIssuer) -> str:
    import hashlib

    return hashlib.sha256(repr(issuer.key_source).encode()).hexdigest()[:16]


class SharedJwksState(Protocol):
    """Cross-process JWKS mirror and refresh lock (Redis in production)."""

    def load(self, issuer_id: str) -> tuple[str, float] | None: ...

    def store(
        self, issuer_id: str, jwks_json: str, fetched_at: float, ttl_seconds: int
    ) -> None: ...

    def try_lock_refresh(self, issuer_id: str, cooldown_seconds: int) -> bool: ...


class JwksFetcher(Protocol):
    def fetch(self, issuer: TrustedIssuer) -> dict[str, Any]: ...


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str
    key: Any = field(repr=False)


@dataclass
class _Cached:
    keys: dict[str, VerificationKey]
    fetched_at: float
    negative: dict[str, float] = field(default_factory=dict)  # kid -> until


def _bounded_get(url: str, timeout: float) -> bytes:
    """GET with a size cap and a deadline for the whole fetch, headers included: requests'
    timeout bounds each socket read only, so an endpoint trickling a byte at a time could
    otherwise hold a worker (and the JWKS lock) for hours. The fetch runs in a daemon thread;
    past the deadline we stop waiting for it, and its own read timeouts end it later."""
    deadline = time.monotonic() + timeout
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            with requests.get(url, timeout=timeout, stream=True, allow_redirects=False) as resp:
                outcome["body"] = _read_bounded(resp, url, deadline)
        except BaseException as err:  # handed to the waiting thread
            outcome["error"] = err

    worker = threading.Thread(target=fetch, name="errand-jwks-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise KeysUnavailable(
            "the issuer's keys are unavailable", debug=f"{url}: fetch deadline passed"
        )
    if "error" in outcome:
        raise outcome["error"]
    return bytes(outcome["body"])


def _read_bounded(resp: requests.Response, url: str, deadline: float) -> bytes:
    if resp.status_code != 200:
        raise KeysUnavailable(
            "the issuer's keys are unavailable", debug=f"GET {url}: HTTP {resp.status_code}"
        )
    body = b""
    for chunk in resp.iter_content(16384):
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise KeysUnavailable("the issuer's keys are unavailable", debug=f"{url}: too large")
        if time.monotonic() > deadline:
            raise KeysUnavailable(
                "the issuer's keys are unavailable", debug=f"{url}: fetch deadline passed"
            )
    if time.monotonic() > deadline:  # the watchdog may have cut the body short
        raise KeysUnavailable("the issuer's keys are unavailable", debug=f"{url}: deadline")
    return body


class HttpJwksFetcher:
    """Fetch a JWKS over HTTP with a short timeout and a size cap, via discovery if needed."""

    def fetch(self, issuer: TrustedIssuer) -> dict[str, Any]:
        try:
            jwks_uri = issuer.jwks_uri or self._discover(issuer)
            doc = json.loads(_bounded_get(jwks_uri, issuer.fetch_timeout_seconds))
        except KeysUnavailable:
            raise
        except (requests.RequestException, ValueError) as err:
            raise KeysUnavailable(
                "the issuer's keys are unavailable", debug=f"{issuer.id}: {type(err).__name__}"
            ) from err
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeysUnavailable(
                "the issuer's keys are unavailable", debug="JWKS has no keys list"
            )
        return doc

    def _discover(self, issuer: TrustedIssuer) -> str:
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = json.loads(_bounded_get(url, issuer.fetch_timeout_seconds))
        if not isinstance(meta, dict) or meta.get("issuer") != issuer.issuer:
            raise KeysUnavailable(
                "the issuer's keys are unavailable", debug="discovery issuer does not match"
            )
        uri = meta.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise KeysUnavailable("the issuer's keys are unavailable", debug="bad jwks_uri")
        return uri


def read_jwks_file(issuer: TrustedIssuer) -> dict[str, Any]:
    """A JWKS (or SPIFFE trust bundle) from a configured file, size-capped like a fetch."""
    assert issuer.jwks_file is not None
    try:
        with open(issuer.jwks_file, "rb") as fh:
            raw = fh.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise KeysUnavailable(
                "the issuer's keys are unavailable", debug=f"{issuer.id}: bundle too large"
            )
        doc = json.loads(raw)
    except OSError as err:
        raise KeysUnavailable(
            "the issuer's keys are unavailable",
            debug=f"{issuer.id}: cannot read bundle: {err.strerror}",
        ) from err
    except ValueError as err:
        raise KeysUnavailable(
            "the issuer's keys are unavailable", debug=f"{issuer.id}: bundle is not JSON"
        ) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysUnavailable("the issuer's keys are unavailable", debug="JWKS has no keys list")
    return doc


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
        public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
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
    def __init__(self, fetcher: JwksFetcher, shared: SharedJwksState, clock: Clock) -> None:
        self._fetcher = fetcher
        self._shared = shared
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._local_cooldown: dict[str, float] = {}
        self._inline: dict[str, tuple[str, dict[str, VerificationKey]]] = {}
        self._fetch_now: set[str] = set()  # issuers whose key source a reload just changed
        self.fetches = 0  # observable for tests and metrics

    def forget(self, issuer_id: str) -> None:
        """Drop cached keys after a reload changed where an issuer's keys come from. Shared
        mirrors carry the fingerprint of the key source they came from, so one written from
        the old source is not adopted either."""
        with self._lock:
            self._cache.pop(issuer_id, None)
            self._inline.pop(issuer_id, None)
            # One fetch from the new source may skip the cooldown (an operator's reload, not
            # something a token can trigger): the old source's lock must not delay the new keys.
            self._fetch_now.add(issuer_id)

    def _inline_key(self, issuer: TrustedIssuer, kid: str | None) -> VerificationKey:
        assert issuer.jwks_json is not None
        cached = self._inline.get(issuer.id)
        if cached is None or cached[0] != issuer.jwks_json:
            cached = (issuer.jwks_json, parse_jwks(json.loads(issuer.jwks_json), issuer))
            self._inline[issuer.id] = cached
        found = self._pick(_Cached(keys=cached[1], fetched_at=0.0), kid)
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
        with self._lock:
            cached = self._cache.get(issuer.id)
            if cached is None or kid not in cached.keys:
                cached = self._adopt_shared(issuer) or cached
            if cached is not None:
                fresh = now - cached.fetched_at < issuer.jwks_max_age_seconds
                found = self._pick(cached, kid)
                if found is not None and fresh:
                    return found
                if found is None and cached.negative.get(kid or "", 0) > now and fresh:
                    raise UnknownKey("the token's key is not in the issuer's key set")
            cached = self._refresh(issuer, cached, now)
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

    def _adopt_shared(self, issuer: TrustedIssuer) -> _Cached | None:
        try:
            mirrored = self._shared.load(issuer.id)
        except Exception:  # a Redis fault must not break verification from local keys
            log.warning("jwks shared cache unavailable", extra={"issuer": issuer.id})
            return None
        if mirrored is None:
            return None
        current = self._cache.get(issuer.id)
        jwks_json, fetched_at = mirrored
        if current is not None and current.fetched_at >= fetched_at:
            return current
        try:
            doc = json.loads(jwks_json)
            source = doc.get(SOURCE_MEMBER) if isinstance(doc, dict) else None
            if source is not None and source != source_fingerprint(issuer):
                return None  # fetched from a key source that a reload replaced
            keys = parse_jwks(doc, issuer)
        except (ValueError, AttributeError):
            return None
        adopted = _Cached(keys=keys, fetched_at=fetched_at)
        self._cache[issuer.id] = adopted
        return adopted

    def _may_fetch(self, issuer: TrustedIssuer, now: float) -> bool:
        if issuer.id in self._fetch_now:
            self._fetch_now.discard(issuer.id)
            return True
        try:
            return self._shared.try_lock_refresh(issuer.id, issuer.refresh_cooldown_seconds)
        except Exception:
            # Redis is down: fall back to a per-process cooldown.
            if self._local_cooldown.get(issuer.id, 0) > now:
                return False
            self._local_cooldown[issuer.id] = now + issuer.refresh_cooldown_seconds
            return True

    def _wait_for_mirror(self, issuer: TrustedIssuer) -> _Cached | None:
        deadline = time.monotonic() + issuer.fetch_timeout_seconds + 0.5
        while time.monotonic() < deadline:
            time.sleep(0.05)
            adopted = self._adopt_shared(issuer)
            if adopted is not None:
                return adopted
        return None

    def _refresh(self, issuer: TrustedIssuer, cached: _Cached | None, now: float) -> _Cached:
        if not self._may_fetch(issuer, now):
            if cached is not None and now - cached.fetched_at < issuer.jwks_stale_seconds:
                return cached
            if cached is None:
                # Another worker holds the fetch: wait for its mirror rather than fail.
                adopted = self._wait_for_mirror(issuer)
                if adopted is not None:
                    return adopted
            raise KeysUnavailable(
                "the issuer's keys are being refreshed; retry shortly", debug="refresh cooldown"
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
            if cached is not None and now - cached.fetched_at < issuer.jwks_stale_seconds:
                log.warning(
                    "jwks refresh failed; serving cached keys",
                    extra={"issuer": issuer.id, "debug": err.debug},
                )
                return cached
            raise
        fresh = _Cached(keys=keys, fetched_at=now)
        self._cache[issuer.id] = fresh
        try:
            mirrored = {**doc, SOURCE_MEMBER: source_fingerprint(issuer)}
            self._shared.store(issuer.id, json.dumps(mirrored), now, issuer.jwks_stale_seconds)
        except Exception:
            log.warning("could not mirror JWKS to Redis", extra={"issuer": issuer.id})
        return fresh
