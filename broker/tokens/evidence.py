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


def sign_record(
    record: dict[str, Any], keyring: KeyRing, issuer: str, *, typ: str = EVIDENCE_TYP
) -> str:
    """Also signs audit checkpoints and task proofs (broker/domain/audit_chain.py), each
    with its own `typ`, so one kind of record is never taken for another."""
    key = keyring.active
    return jwt.encode(
        {"iss": issuer, **record},
        key.private_key,
        algorithm=key.alg,
        headers={"kid": key.kid, "typ": typ},
    )


def verify_record(
    jws: str, jwks: dict[str, Any], issuer: str, *, typ: str = EVIDENCE_TYP
) -> dict[str, Any]:
    """Check a record's signature against a JWKS (public keys only); return its claims."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError as err:
        raise EvidenceInvalid("not a JWS") from err
    if header.get("typ") != typ:
        raise EvidenceInvalid(f"not a {typ} record")
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
                        # A record's iat is what it states, not a validity window (an audit
                        # checkpoint is checked years later, maybe on a skewed clock).
                        "verify_iat": typ == EVIDENCE_TYP,
                        "require": ["iss", "jti", "iat"],
                    },
                )
            except jwt.PyJWTError as err:
                raise EvidenceInvalid(f"signature or claims invalid: {type(err).__name__}") from err
            return claims
    raise EvidenceInvalid("the signing key is not in the key set")
