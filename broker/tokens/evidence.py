"""Signed revocation records: what was revoked, when, why, by whom and how many.

A record is a compact JWS signed with the broker's active signing key (header typ
`errand-revocation+jwt`), so an auditor can check it later against the broker's published
keys, and any change to it breaks the signature."""

from __future__ import annotations

from typing import Any

import jwt

from broker.tokens.keyring import KeyRing

EVIDENCE_TYP = "errand-revocation+jwt"


class EvidenceInvalid(Exception):
    pass


def sign_record(record: dict[str, Any], keyring: KeyRing, issuer: str) -> str:
    key = keyring.active
    return jwt.encode(
        {"iss": issuer, **record},
        key.private_key,
        algorithm=key.alg,
        headers={"kid": key.kid, "typ": EVIDENCE_TYP},
    )


def verify_record(jws: str, jwks: dict[str, Any], issuer: str) -> dict[str, Any]:
    """Check a record's signature against a JWKS (public keys only); return its claims."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError as err:
        raise EvidenceInvalid("not a JWS") from err
    if header.get("typ") != EVIDENCE_TYP:
        raise EvidenceInvalid("not a revocation record")
    for jwk in jwks.get("keys", []):
        if jwk.get("kid") == header.get("kid"):
            alg = jwk.get("alg") or "ES256"
            if header.get("alg") != alg:
                raise EvidenceInvalid("algorithm does not match the key")
            key = jwt.PyJWK(jwk, algorithm=alg).key
            try:
                claims: dict[str, Any] = jwt.decode(
                    jws,
                    key,
                    algorithms=[alg],
                    issuer=issuer,
                    options={
                        "verify_aud": False,
                        "verify_exp": False,
                        "require": ["iss", "jti", "iat"],
                    },
                )
            except jwt.PyJWTError as err:
                raise EvidenceInvalid(f"signature or claims invalid: {type(err).__name__}") from err
            return claims
    raise EvidenceInvalid("the signing key is not in the key set")
