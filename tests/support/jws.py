"""Raw JWS building and inspection: keys made at test time, segments from any bytes, and
signatures computed without PyJWT's checks (for shapes a well-behaved library refuses)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from broker.tokens.keyring import SigningKey, thumbprint


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A base64url segment: bytes as they are, str as UTF-8, anything else as compact JSON."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode("utf-8"))
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def new_es256_key() -> SigningKey:
    """A fresh P-256 key whose kid is its RFC 7638 thumbprint."""
    private = ec.generate_private_key(ec.SECP256R1())
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg="ES256", private_key=private)


def es256_sign(key: SigningKey, header: Any, payload: Any) -> str:
    """Sign arbitrary header/payload bytes with an ES256 key, without PyJWT's checks."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64url(sig)}"


def hs256_sign(secret: bytes, header: Any, payload: Any) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def rs256_sign(private_key: rsa.RSAPrivateKey, header: Any, payload: Any) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), private_key)
    return f"{signing_input}.{b64url(sig)}"


def raw_jws(
    header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes = b"sig"
) -> str:
    """A compact JWS from raw parts and a made-up signature (for shapes PyJWT refuses)."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{segment(h)}.{segment(p)}.{b64url(signature)}"


def public_pem(key: SigningKey) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unverified header and claims of a compact JWT (test inspection only)."""
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def unverified_claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def sha256_hex(token: str) -> str:
    """What audit records in place of a token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def secret_fragments(token: str) -> list[str]:
    """The token and each long segment of it: none may appear in audit, logs or bodies."""
    return [token, *[p for p in token.split(".") if len(p) > 16]]


def assert_not_leaked(token: str, texts: list[str]) -> None:
    for text in texts:
        for fragment in secret_fragments(token):
            assert fragment not in text, "a token (or a segment of one) leaked"
