"""Offline verification of Errand's RFC 9068 JWT access tokens.

Order of checks (cheapest first, and nothing before the signature trusts the token): size →
shape → header (`alg` from the asymmetric allow-list, `typ` at+jwt, no `crit`; `jku`, `x5u`,
`jwk`, `x5c` ignored) → issuer (the unverified `iss` must be ours before any key lookup can
cause a fetch) → key (`kid` is only a dictionary key into our issuer's JWKS; the algorithm
comes from the key) → signature → claims (`iss` exact, our audience in `aud`, `exp`, `iat`,
`nbf` with bounded leeway, numeric dates that are integers, Errand's claims well typed) →
revocation (if a feed is given) → scopes."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeGuard

import jwt

from errand_jose import JoseError, read_compact_jws
from errand_rs._http import check_broker_url
from errand_rs.errors import InsufficientScope, InvalidToken
from errand_rs.jwks import JwksCache

if TYPE_CHECKING:
    from errand_rs.feed import RevocationFeed

log = logging.getLogger("errand_rs")

# RFC 8725 §3.1: asymmetric algorithms only; never `none`, never HMAC (whose "secret" would be
# our public key). A key is used with its own algorithm, never the one a header names.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")  # RFC 9068 §4
MAX_TOKEN_BYTES = 8192
MAX_LEEWAY_SECONDS = 60
MAX_CLAIM_LENGTH = 256
MAX_AUDIENCES = 32
STRING_CLAIMS = ("sub", "jti", "client_id", "task_id", "identity_type", "owner")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def token_fingerprint(token: str) -> str:
    """A SHA-256 prefix that identifies a token in logs without revealing it."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class VerifiedToken:
    """The claims of a verified access token. Reads like a read-only dict of its claims
    (`token["task_id"]`, `token.get("owner")`) and has typed attributes for Errand's claims."""

    claims: Mapping[str, Any] = field(repr=False)
    subject: str
    jti: str
    client_id: str
    task_id: str
    identity_type: str
    owner: str
    epoch: int
    iat: int
    exp: int
    audiences: tuple[str, ...]
    scopes: frozenset[str]

    def __getitem__(self, name: str) -> Any:
        return self.claims[name]

    def __contains__(self, name: object) -> bool:
        return name in self.claims

    def __iter__(self) -> Iterator[str]:
        return iter(self.claims)

    def get(self, name: str, default: Any = None) -> Any:
        return self.claims.get(name, default)

    def has_scopes(self, required: Iterable[str]) -> bool:
        return set(required) <= self.scopes


def normalize_scopes(required: Iterable[str] | str | None) -> tuple[str, ...]:
    """A tuple of scope tokens; a string is read as space-separated (RFC 6749 §3.3)."""
    if required is None:
        return ()
    if isinstance(required, str):
        return tuple(required.split())
    scopes = tuple(required)
    for scope in scopes:
        if not isinstance(scope, str) or not scope or " " in scope:
            raise ValueError(f"not a scope token: {scope!r}")
    return scopes


class ErrandVerifier:
    """Verify Errand access tokens offline against the broker's JWKS.

    `verify()` raises `InvalidToken` (401) or `InsufficientScope` (403); see errand_rs.errors.
    Thread-safe; one instance per process and issuer is enough. `clock` (wall time, for the
    token's dates) and `monotonic` (the JWKS cache's expiry and refresh cooldown) default to
    the real clocks; tests pass their own instead of waiting."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_cache_seconds: float = 300,
        jwks_refresh_cooldown_seconds: float = 10,
        leeway_seconds: int = 30,
        http_timeout_seconds: float = 3.0,
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = ALLOWED_ALGORITHMS,
        max_token_lifetime_seconds: int = 86400,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        check_broker_url(issuer, "issuer (the broker's URL, exactly as in `iss`)")
        if jwks_uri is not None:
            check_broker_url(jwks_uri, "jwks_uri")
        if not isinstance(audience, str) or not audience:
            raise ValueError("audience must be this resource server's audience string")
        if not _is_int(leeway_seconds) or not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway_seconds must be an integer from 0 to {MAX_LEEWAY_SECONDS}")
        algs = tuple(algorithms)
        if not algs or not set(algs) <= set(ALLOWED_ALGORITHMS):
            raise ValueError(f"algorithms must be a non-empty subset of {ALLOWED_ALGORITHMS}")
        if (
            jwks_cache_seconds <= 0
            or jwks_refresh_cooldown_seconds < 0
            or http_timeout_seconds <= 0
        ):
            raise ValueError("cache, cooldown and timeout must be positive")
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.algorithms = algs
        self.max_token_lifetime_seconds = max_token_lifetime_seconds
        self._clock = clock
        self.jwks = JwksCache(
            jwks_uri or issuer.rstrip("/") + "/.well-known/jwks.json",
            algorithms=algs,
            cache_seconds=jwks_cache_seconds,
            refresh_cooldown_seconds=jwks_refresh_cooldown_seconds,
            timeout_seconds=http_timeout_seconds,
            monotonic=monotonic,
        )

    def __repr__(self) -> str:
        return f"ErrandVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    def verify(
        self,
        token: str,
        *,
        require_scopes: Iterable[str] | str | None = (),
        feed: RevocationFeed | None = None,
    ) -> VerifiedToken:
        """The verified token, or InvalidToken / TokenRevoked / FeedUnavailable /
        InsufficientScope. With `feed=None` revocation is not checked (see the docs)."""
        required = normalize_scopes(require_scopes)
        verified = self._verify_token(token)
        if feed is not None:
            feed.check(verified)  # revoked beats insufficient scope: 401 before 403
        missing = [s for s in required if s not in verified.scopes]
        if missing:
            raise InsufficientScope(required)
        return verified

    def _verify_token(self, token: str) -> VerifiedToken:
        try:
            parsed = read_compact_jws(token, max_bytes=MAX_TOKEN_BYTES)
        except JoseError as err:
            raise InvalidToken("The access token is malformed.", reason="malformed") from err
        header = parsed.header
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("The access token's algorithm is not accepted.", reason="bad_alg")
        typ = header.get("typ")
        # RFC 9068 §4: at+jwt (or application/at+jwt; media types compare case-insensitively).
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("The token is not an access token (typ).", reason="bad_typ")
        if "crit" in header:
            raise InvalidToken("The access token's header is not accepted.", reason="crit")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_CLAIM_LENGTH:
            raise InvalidToken("The access token names no signing key.", reason="no_kid")
        unverified_iss = parsed.payload.get("iss")
        if unverified_iss != self.issuer:
            # Before the key lookup: a foreign token must not cause a JWKS fetch.
            raise InvalidToken("The access token is from another issuer.", reason="bad_iss")
        key = self.jwks.key_for(kid)
        if key.alg != alg:
            raise InvalidToken(
                "The access token's algorithm is not accepted.", reason="alg_mismatch"
            )
        try:
            jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_seconds,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"],
                    "verify_signature": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    # Dates are checked below against our clock, as integers only.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError as err:
            raise InvalidToken(
                "The access token's signature is invalid.", reason="bad_signature"
            ) from err
        except jwt.InvalidAudienceError as err:
            raise InvalidToken(
                "The access token is not for this audience.", reason="bad_aud"
            ) from err
        except jwt.PyJWTError as err:
            raise InvalidToken("The access token is invalid.", reason=type(err).__name__) from err
        # The strictly parsed payload is the one that was signed (no duplicate members).
        return self._check_claims(parsed.payload)

    def _check_claims(self, claims: dict[str, Any]) -> VerifiedToken:
        if claims.get("iss") != self.issuer:
            raise InvalidToken("The access token is from another issuer.", reason="bad_iss")
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
        if (
            not audiences
            or len(audiences) > MAX_AUDIENCES
            or not all(isinstance(a, str) for a in audiences)
            or self.audience not in audiences
        ):
            raise InvalidToken("The access token is not for this audience.", reason="bad_aud")
        now = self._clock()
        leeway = self.leeway_seconds
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _is_int(exp) or not _is_int(iat):
            raise InvalidToken("The access token's dates are not integers.", reason="bad_dates")
        if exp <= now - leeway:
            raise InvalidToken("The access token has expired.", reason="expired")
        if iat > now + leeway:
            raise InvalidToken("The access token is issued in the future.", reason="iat_future")
        if not 0 < exp - iat <= self.max_token_lifetime_seconds:
            raise InvalidToken(
                "The access token's lifetime is not accepted.", reason="bad_lifetime"
            )
        if "nbf" in claims:
            nbf = claims["nbf"]
            if not _is_int(nbf) or nbf > now + leeway:
                raise InvalidToken("The access token is not yet valid.", reason="nbf")
        for name in STRING_CLAIMS:
            value = claims.get(name)
            if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_LENGTH:
                raise InvalidToken(
                    f"The access token's {name} claim is missing or malformed.",
                    reason=f"bad_{name}",
                )
        epoch = claims.get("epoch")
        if not _is_int(epoch) or epoch < 0:
            raise InvalidToken(
                "The access token's epoch claim is missing or malformed.", reason="bad_epoch"
            )
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise InvalidToken("The access token's scope claim is malformed.", reason="bad_scope")
        return VerifiedToken(
            claims=MappingProxyType(dict(claims)),
            subject=claims["sub"],
            jti=claims["jti"],
            client_id=claims["client_id"],
            task_id=claims["task_id"],
            identity_type=claims["identity_type"],
            owner=claims["owner"],
            epoch=epoch,
            iat=iat,
            exp=exp,
            audiences=audiences,
            scopes=frozenset(scope.split()),
        )
