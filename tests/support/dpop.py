"""DPoP proofs for tests: honest ones from errand_client's DpopKey, and hand-made ones with any
header or claims (wrong typ, alg, key, htu...) signed by any key."""

from __future__ import annotations

import json
import secrets
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from errand_client.dpop import DpopKey, access_token_hash

__all__ = ["DpopKey", "access_token_hash", "make_key", "public_jwk", "raw_proof"]


def make_key(alg: str = "ES256") -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return dict(json.loads(ECAlgorithm.to_jwk(pub)))
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return dict(json.loads(OKPAlgorithm.to_jwk(pub)))
    return dict(json.loads(RSAAlgorithm.to_jwk(pub)))


def raw_proof(
    key: Any,
    *,
    htm: str = "POST",
    htu: str,
    iat: float,
    alg: str = "ES256",
    header: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A proof with exactly these claims and header members (None drops one)."""
    body: dict[str, Any] = {
        "jti": secrets.token_urlsafe(12),
        "htm": htm,
        "htu": htu,
        "iat": int(iat),
    }
    body.update(claims)
    for name in drop:
        body.pop(name, None)
    head: dict[str, Any] = {"typ": "dpop+jwt", "jwk": public_jwk(key)}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers=head)
