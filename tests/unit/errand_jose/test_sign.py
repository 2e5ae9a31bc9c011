"""sign_compact writes the tokens jwt.encode wrote: the same header and payload segments, a
signature of the same form that verifies."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from errand_jose import read_compact_jws, verify_signature
from errand_jose.sign import header_segment, sign_compact

CLAIMS: dict[str, Any] = {
    "iss": "https://errand.example",
    "sub": "acme-app-deploy",
    "aud": ["https://a.example", "https://b.example"],
    "exp": 2_000_000_000,
    "iat": 1_999_999_000,
    "jti": "j-1",
    "scope": "deploy:write",
    "purpose": "caf\u00e9",  # non-ASCII: escaped as PyJWT escapes it
    "epoch": 3,
}
KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
}


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_the_same_token_as_pyjwt(alg: str) -> None:
    key = KEYS[alg]()
    header = {"typ": "at+jwt", "kid": "k-1", "alg": alg}
    ours = sign_compact(header_segment(header), CLAIMS, key, alg)
    theirs = jwt.encode(CLAIMS, key, algorithm=alg, headers={"kid": "k-1", "typ": "at+jwt"})
    assert ours.split(".")[:2] == theirs.split(".")[:2]
    assert len(ours.split(".")[2]) == len(theirs.split(".")[2])  # raw r||s for ES*
    parsed = read_compact_jws(ours, max_bytes=16384)
    assert verify_signature(parsed, key.public_key(), alg)
    assert parsed.payload == CLAIMS


def test_no_symmetric_or_none() -> None:
    for alg in ("HS256", "none"):
        with pytest.raises(ValueError, match="unsupported"):
            sign_compact(header_segment({"alg": alg}), CLAIMS, b"secret", alg)
