"""Checking a DPoP proof (RFC 9449 §4.3), shared by the broker's token endpoint and errand_rs.

Order of checks, cheapest first and nothing trusted before the signature: size → shape
(compact JWS, canonical base64url, strict JSON) → header (`typ` dpop+jwt, `alg` from the
asymmetric allow-list, no `crit`, a public `jwk` that fits `alg`) → signature with that key →
claims (`jti`, `htm`, `htu`, `iat` within the window, `ath` when an access token goes with
the proof, `nonce` when the caller wants one) → the thumbprint the caller compares or binds.

Replay (the `jti` seen before) is the caller's: the broker claims it in Redis, errand_rs in
its replay cache. Every failure is a DpopError whose message is safe to show the caller; its
`error` is `invalid_dpop_proof` or, for a missing or stale nonce, `use_dpop_nonce` (§8)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from errand_jose.compact import JoseError, read_compact_jws, verify_signature
from errand_jose.thumbprint import b64url_encode, jwk_thumbprint, public_key_for

DPOP_TYP = "dpop+jwt"  # RFC 9449 §4.2
# Asymmetric only (RFC 9449 §4.2: never `none`, never a MAC); what errand_jose can verify.
DPOP_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256")
MAX_PROOF_BYTES = 4096  # an RSA-4096 key in the header fits; a proof is per request
MAX_PROOF_HEADER_BYTES = 2048
MAX_JTI_CHARS = 256
MAX_NONCE_CHARS = 256
MAX_HTU_CHARS = 2048
INVALID_DPOP_PROOF = "invalid_dpop_proof"
USE_DPOP_NONCE = "use_dpop_nonce"


class DpopError(Exception):
    """An unacceptable DPoP proof; the message is safe to show, `reason` is for logs."""

    def __init__(self, message: str, *, reason: str, error: str = INVALID_DPOP_PROOF) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.error = error


@dataclass(frozen=True)
class DpopProof:
    """A proof whose signature and claims were checked."""

    jkt: str  # RFC 7638 SHA-256 thumbprint of the proof's key
    jti: str
    iat: int
    nonce: str | None
    claims: dict[str, Any]


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 `ath`: base64url(SHA-256(ASCII(access token)))."""
    return b64url_encode(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def normalise_htu(url: str) -> str:
    """The URL as §4.3 compares it: without query and fragment, scheme and host lower-cased,
    the default port dropped, an empty path as `/` (RFC 3986 §6.2.2 and §6.2.3).
    Raises ValueError for something that is not an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise ValueError("not an absolute http(s) URL")
    port = parts.port  # ValueError for a port that is not a number
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", "", ""))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    max_age_seconds: int,
    leeway_seconds: int = 5,
    algorithms: tuple[str, ...] = DPOP_ALGORITHMS,
    access_token: str | None = None,
    nonce_ok: Callable[[str | None], bool] | None = None,
) -> DpopProof:
    """The checked proof for a request `method url`, or DpopError.

    `url` is the request's URL as this server sees it (or is configured to see it); both it
    and the proof's `htu` are normalised before comparing. `iat` must lie within
    `max_age_seconds` before now and `leeway_seconds` after it. With `access_token`, the
    proof must carry its `ath`; `nonce_ok`, when given, says whether the proof's `nonce`
    (None: absent) is one this server issued and still accepts."""
    try:
        jws = read_compact_jws(
            proof, max_bytes=MAX_PROOF_BYTES, max_header_bytes=MAX_PROOF_HEADER_BYTES
        )
    except JoseError as err:
        raise DpopError(f"the DPoP proof is malformed ({err})", reason="malformed") from err
    header, claims = jws.header, jws.payload
    typ = header.get("typ")
    # RFC 9449 §4.2 explicit typing; media types compare case-insensitively (RFC 8725 §3.11).
    if not isinstance(typ, str) or typ.lower() != DPOP_TYP:
        raise DpopError("the DPoP proof's typ is not dpop+jwt", reason="bad_typ")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise DpopError("the DPoP proof's alg is not accepted", reason="bad_alg")
    if "crit" in header:
        raise DpopError("the DPoP proof's header is not accepted (crit)", reason="crit")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise DpopError("the DPoP proof carries no public jwk", reason="no_jwk")
    try:
        key = public_key_for(jwk, alg)
        jkt = jwk_thumbprint(jwk)
    except JoseError as err:
        raise DpopError(f"the DPoP proof's jwk is not accepted ({err})", reason="bad_jwk") from err
    if not verify_signature(jws, key, alg):
        raise DpopError("the DPoP proof's signature is invalid", reason="bad_signature")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_CHARS:
        raise DpopError("the DPoP proof's jti is missing or malformed", reason="bad_jti")
    if claims.get("htm") != method:
        raise DpopError("the DPoP proof's htm does not match the request", reason="bad_htm")
    htu = claims.get("htu")
    if not isinstance(htu, str) or len(htu) > MAX_HTU_CHARS:
        raise DpopError("the DPoP proof's htu is missing or malformed", reason="bad_htu")
    try:
        same_url = normalise_htu(htu) == normalise_htu(url)
    except ValueError:
        same_url = False
    if not same_url:
        raise DpopError("the DPoP proof's htu does not match the request", reason="bad_htu")
    iat = claims.get("iat")
    if not _is_int(iat):
        raise DpopError("the DPoP proof's iat is missing or not an integer", reason="bad_iat")
    if not now - max_age_seconds - leeway_seconds <= iat <= now + leeway_seconds:
        raise DpopError("the DPoP proof is too old or from the future (iat)", reason="iat_window")
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(
            ath, access_token_hash(access_token)
        ):
            raise DpopError(
                "the DPoP proof's ath does not match the access token", reason="bad_ath"
            )
    nonce = claims.get("nonce")
    if nonce is not None and (not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_CHARS):
        raise DpopError("the DPoP proof's nonce is malformed", reason="bad_nonce")
    if nonce_ok is not None and not nonce_ok(nonce):
        raise DpopError(
            "a fresh DPoP nonce is required", reason="nonce_required", error=USE_DPOP_NONCE
        )
    return DpopProof(jkt=jkt, jti=jti, iat=iat, nonce=nonce, claims=claims)
