"""JWK thumbprints (RFC 7638) and public keys from a JWK, for DPoP (RFC 9449 §6.1: `cnf.jkt`).

A thumbprint hashes only the required members of the key, in lexicographic order, with no
whitespace (RFC 7638 §3.2), so one key has one thumbprint whatever else its JWK carries."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from errand_jose.algorithms import CURVE_ALGORITHMS
from errand_jose.compact import JoseError, b64url_decode
from errand_jose.jwk import PRIVATE_JWK_MEMBERS

# RFC 7638 §3.2 (EC, RSA), RFC 8037 §2 (OKP): the members a thumbprint covers.
THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
MIN_RSA_BITS = 2048
MAX_MEMBER_CHARS = 1400  # an RSA-8192 modulus is 1366 base64url characters


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url without padding. Raises JoseError for a JWK
    whose type is not EC, RSA or OKP or whose required members are missing or not strings."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise JoseError("unsupported key type")
    picked: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_MEMBER_CHARS:
            raise JoseError(f"JWK member {name} is missing or malformed")
        picked[name] = value
    canonical = json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def public_key_for(jwk: Mapping[str, Any], alg: str) -> Any:
    """The public key of `jwk` for use with exactly `alg`, or JoseError.

    Refuses private members (RFC 9449 §4.2: the header carries the public key only), a key
    type or curve that does not fit the algorithm (an ES256 proof must use P-256), and RSA
    keys under 2048 bits. Every key member is checked to be canonical base64url first."""
    if any(member in jwk for member in PRIVATE_JWK_MEMBERS):
        raise JoseError("the JWK holds private key material")
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty)  # type: ignore[arg-type]
    if members is None:
        raise JoseError("unsupported key type")
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_MEMBER_CHARS:
            raise JoseError(f"JWK member {name} is missing or malformed")
        if name not in ("kty", "crv"):
            b64url_decode(value)
    public = {name: jwk[name] for name in members}
    try:
        if kty in ("EC", "OKP"):
            if CURVE_ALGORITHMS.get(jwk["crv"]) != alg:
                raise JoseError("the key's curve does not fit the algorithm")
            if kty == "EC":
                return ECAlgorithm.from_jwk(public)
            return OKPAlgorithm.from_jwk(public)
        if not (alg.startswith("RS") or alg.startswith("PS")):
            raise JoseError("an RSA key does not fit the algorithm")
        key = RSAAlgorithm.from_jwk(public)
    except JoseError:
        raise
    except Exception as err:  # PyJWT raises InvalidKeyError, ValueError, TypeError...
        raise JoseError("the JWK is not a usable public key") from err
    if key.key_size < MIN_RSA_BITS:
        raise JoseError("the RSA key is too short")
    return key
