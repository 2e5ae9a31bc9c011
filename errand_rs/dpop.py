"""DPoP-bound tokens at a resource server (RFC 9449 §7), with the MCP DPoP profile's
`content_digest` binding of a proof to the exact request body (RFC 9530 Content-Digest).

    checker = DpopChecker(public_url="https://mcp.example")   # or let it read the request
    app = ErrandMiddleware(app, verifier, feed, dpop=checker)

A request with `Authorization: DPoP <token>` must carry exactly one `DPoP` proof that:
- is a well-formed `dpop+jwt`, signed with an allowed asymmetric algorithm by the public key
  in its header (errand_jose.check_proof),
- names this request: `htm` its method, `htu` its URL without query and fragment,
- is fresh: `iat` within `max_age_seconds` (plus a few seconds of leeway),
- is bound to this token: `ath` = base64url(SHA-256(token)), and its key's RFC 7638
  thumbprint equals the token's `cnf.jkt`,
- when it carries `content_digest` (always, with `require_content_digest=True`), equals the
  SHA-256 Content-Digest of the exact body received (and a `Content-Digest` header, if
  sent, must agree),
- has not been seen before (its `jti`, per key, in the replay cache), claimed last so a
  refused request spends nothing.

A token bound to a key (`cnf`) presented as `Bearer` is refused everywhere in errand_rs
(RFC 9449 §7.1), with or without a DpopChecker: a stolen bound token is useless without the
key.

The default replay cache is in memory, per process: bounded (LRU) and expiring. With several
processes or replicas behind a balancer a proof could be replayed once at each of them
within its window; pass a shared `replay_cache` (anything with `claim(key, expires_at)`)
when that matters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from errand_jose import DPOP_ALGORITHMS, DpopError, check_proof
from errand_rs.errors import (
    BearerError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    _quote,
)
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ErrandVerifier, VerifiedToken, normalize_scopes, token_fingerprint

log = logging.getLogger("errand_rs")

MAX_AGE_SECONDS = 60
LEEWAY_SECONDS = 5
DEFAULT_REPLAY_ENTRIES = 100_000
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_JKT_CHARS = 64


class ReplayCache(Protocol):
    def claim(self, key: str, expires_at: float) -> bool:
        """True if `key` was not live and is now held until `expires_at` (wall time)."""


class MemoryReplayCache:
    """An in-process replay cache: at most `max_entries`, each kept until it expires.

    Full of live entries, it forgets the oldest first (those closest to leaving the proof
    window); size it above the proofs one process accepts per window. Thread-safe."""

    def __init__(
        self, max_entries: int = DEFAULT_REPLAY_ENTRIES, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            held = self._entries.get(key)
            if held is not None and held > now:
                return False
            self._entries[key] = expires_at
            self._entries.move_to_end(key)
            # Drop expired entries from the old end, then the oldest if still over the bound.
            while self._entries:
                oldest_key, oldest_exp = next(iter(self._entries.items()))
                if oldest_exp > now and len(self._entries) <= self.max_entries:
                    break
                del self._entries[oldest_key]
            return True


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest with SHA-256: `sha-256=:<base64>:`."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def _header_sha256(header: str) -> str | None:
    """The sha-256 member of a Content-Digest header, as `sha-256=:...:`, or None."""
    for member in header.split(","):
        name, _, value = member.strip().partition("=")
        if name.strip().lower() == "sha-256":
            return f"sha-256={value.strip()}"
    return None


class InvalidDpopProof(InvalidToken):
    """RFC 9449 §7.1: the proof is missing, malformed, stale, replayed or not for this
    request, token or key (401 invalid_dpop_proof)."""

    error = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."
    reason = "invalid_dpop_proof"


class DpopChallenge(BearerError):
    """Another error, answered with the DPoP scheme (RFC 9449 §7.1):
    `WWW-Authenticate: DPoP error="...", algs="ES256 ..."`. `also_bearer` adds a Bearer
    challenge, for a resource server that accepts both."""

    def __init__(self, cause: BearerError, algs: Sequence[str], *, also_bearer: bool = False):
        super().__init__(cause.description, reason=cause.reason)
        self.cause = cause
        self.status_code = cause.status_code
        self.error = cause.error
        self.algs = tuple(algs)
        self.also_bearer = also_bearer

    def challenge_params(self) -> dict[str, str]:
        params = self.cause.challenge_params()
        params["algs"] = " ".join(self.algs)
        return params

    def www_authenticate(
        self, realm: str | None = None, extra: Mapping[str, str] | None = None
    ) -> str:
        params = {"realm": realm} if realm else {}
        params.update(self.challenge_params())  # never empty: algs is always there
        for name, value in (extra or {}).items():  # RFC 9728 resource_metadata, scope
            params.setdefault(name, value)
        return "DPoP " + ", ".join(f'{k}="{_quote(v)}"' for k, v in params.items())

    def body(self) -> dict[str, Any]:
        return self.cause.body()

    def response_parts(
        self, realm: str | None = None, extra: Mapping[str, str] | None = None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, body = super().response_parts(realm, extra)
        if self.also_bearer:
            # The Bearer alternative carries no error (the request used neither scheme
            # wrongly as Bearer), but the same `extra`: RFC 9728 resource_metadata and scope.
            headers.append(("WWW-Authenticate", MissingToken().www_authenticate(realm, extra)))
        return status, headers, body


def bound_jkt(token: VerifiedToken) -> str | None:
    """The `cnf.jkt` a token is bound to, None if it carries no `cnf`. A `cnf` we cannot
    read is refused, never ignored: it would turn a bound token into a bearer one."""
    if "cnf" not in token:
        return None
    cnf = token["cnf"]
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not 0 < len(jkt) <= MAX_JKT_CHARS:
        raise InvalidToken("The access token's cnf claim is malformed.", reason="bad_cnf")
    return jkt


class DpopChecker:
    """How a resource server checks DPoP proofs; one per process.

    `public_url`: the scheme and host clients use (`https://mcp.example`), when a proxy in
    front changes what the app sees; the path comes from the request. `require_dpop`: refuse
    Bearer tokens altogether. `require_content_digest`: every proof must bind the body."""

    def __init__(
        self,
        *,
        algorithms: Iterable[str] = DPOP_ALGORITHMS,
        max_age_seconds: int = MAX_AGE_SECONDS,
        leeway_seconds: int = LEEWAY_SECONDS,
        replay_cache: ReplayCache | None = None,
        require_dpop: bool = False,
        require_content_digest: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        public_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        algs = tuple(algorithms)
        if not algs or not set(algs) <= set(DPOP_ALGORITHMS):
            raise ValueError(f"algorithms must be a non-empty subset of {DPOP_ALGORITHMS}")
        if not 1 <= max_age_seconds <= 300 or not 0 <= leeway_seconds <= 60:
            raise ValueError("max_age_seconds must be 1..300 and leeway_seconds 0..60")
        self.algorithms = algs
        self.max_age_seconds = max_age_seconds
        self.leeway_seconds = leeway_seconds
        self.replay_cache = replay_cache or MemoryReplayCache(clock=clock)
        self.require_dpop = require_dpop
        self.require_content_digest = require_content_digest
        self.max_body_bytes = max_body_bytes
        self.public_url = public_url.rstrip("/") if public_url else None
        self._clock = clock

    def challenge(self, err: BearerError) -> DpopChallenge:
        return DpopChallenge(err, self.algorithms, also_bearer=not self.require_dpop)

    def check(
        self,
        token: str,
        verified: VerifiedToken,
        *,
        proofs: Sequence[str],
        method: str,
        url: str,
        body: bytes | None,
        content_digest_header: str | None = None,
    ) -> None:
        """Raises InvalidDpopProof unless the one proof binds this request to the token's key."""
        jkt = bound_jkt(verified)
        if jkt is None:
            raise InvalidToken(
                "The access token is not bound to a key; send it as Bearer.", reason="not_bound"
            )
        if len(proofs) != 1:
            raise InvalidDpopProof("Send exactly one DPoP proof.", reason="dpop_header_count")
        try:
            proof = check_proof(
                proofs[0],
                method=method,
                url=url,
                now=self._clock(),
                max_age_seconds=self.max_age_seconds,
                leeway_seconds=self.leeway_seconds,
                algorithms=self.algorithms,
                access_token=token,
            )
        except DpopError as err:
            raise InvalidDpopProof(
                err.message[:1].upper() + err.message[1:] + ".", reason=err.reason
            ) from err
        if not hmac.compare_digest(proof.jkt, jkt):
            raise InvalidDpopProof(
                "The DPoP proof is not signed by the key the token is bound to.",
                reason="jkt_mismatch",
            )
        self._check_body(proof.claims.get("content_digest"), body, content_digest_header)
        expires_at = proof.iat + self.max_age_seconds + self.leeway_seconds + 1
        if not self.replay_cache.claim(f"{proof.jkt}:{proof.jti}", expires_at):
            raise InvalidDpopProof("The DPoP proof has already been used.", reason="replayed")

    def _check_body(self, claimed: Any, body: bytes | None, header: str | None) -> None:
        if claimed is None and not self.require_content_digest:
            return
        if not isinstance(claimed, str):
            raise InvalidDpopProof(
                "The DPoP proof must bind the request body (content_digest).",
                reason="no_content_digest",
            )
        if body is None:
            raise InvalidDpopProof(
                "The request body is too large to check.", reason="body_too_large"
            )
        actual = content_digest(body)
        if not hmac.compare_digest(claimed.encode(), actual.encode()):
            raise InvalidDpopProof(
                "The DPoP proof's content_digest does not match the body.", reason="bad_digest"
            )
        if header is not None:
            sent = _header_sha256(header)
            if sent is None or not hmac.compare_digest(sent.encode(), actual.encode()):
                raise InvalidDpopProof(
                    "The Content-Digest header does not match the body.", reason="bad_digest_header"
                )

    def request_url(self, path: str, fallback: str) -> str:
        """The URL a proof's htu must name: public_url + path, or what the request says."""
        return self.public_url + path if self.public_url else fallback


def _scheme_and_token(authorization: str | None) -> tuple[str, str]:
    if not authorization:
        raise MissingToken()
    scheme, _, rest = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "dpop"):
        raise MissingToken()
    token = rest.strip()
    if not token or any(c.isspace() for c in token) or "," in token:
        raise InvalidRequest()
    return scheme, token


def authenticate_dpop(
    verifier: ErrandVerifier,
    feed: RevocationFeed | None,
    checker: DpopChecker,
    *,
    authorization: str | None,
    proofs: Sequence[str],
    method: str,
    url: str,
    body: bytes | None,
    content_digest_header: str | None = None,
    required_scopes: Iterable[str] | str | None = (),
    context: str = "",
) -> VerifiedToken:
    """The verified token of a request that may use DPoP, or a DpopChallenge to render.

    `Bearer`: an unbound token as in errand_rs.authenticate (refused if `require_dpop`); a
    bound one is refused. `DPoP`: the token, then its proof (DpopChecker.check), then the
    scopes: a request without the key gets 401 before it can learn which scopes it lacks."""
    token: str | None = None
    required = normalize_scopes(required_scopes)
    try:
        scheme, token = _scheme_and_token(authorization)
        if scheme == "bearer" and checker.require_dpop:
            raise InvalidToken("This resource requires a DPoP-bound token.", reason="dpop_required")
        verified = verifier.verify(token, feed=feed)
        if scheme == "bearer":
            if bound_jkt(verified) is not None:
                raise InvalidToken(
                    "The access token is bound to a key: use the DPoP scheme with a proof.",
                    reason="dpop_bound_as_bearer",
                )
        else:
            checker.check(
                token,
                verified,
                proofs=proofs,
                method=method,
                url=url,
                body=body,
                content_digest_header=content_digest_header,
            )
        if not verified.has_scopes(required):
            raise InsufficientScope(required)
        return verified
    except BearerError as err:
        log.info(
            "errand_rs: token rejected",
            extra={
                "errand_reason": err.reason,
                "errand_status": err.status_code,
                "errand_token_sha256": token_fingerprint(token) if token else None,
                "errand_context": context,
            },
        )
        raise checker.challenge(err) from err
