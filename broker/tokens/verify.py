"""Verify Errand's own access tokens (for introspection, revocation and task completion)."""

from __future__ import annotations

from typing import Any

from broker.tokens.keyring import KeyRing
from broker.tokens.mint import ACCESS_TOKEN_TYP
from errand_jose import JoseError, read_compact_jws, verify_signature

MAX_ACCESS_TOKEN_BYTES = 16384  # mint.py refuses to mint anything larger


class NotOurToken(Exception):
    """The token is malformed, not signed by one of our keys, or fails a claim check."""


def verify_access_token(
    token: str, keyring: KeyRing, issuer: str, *, now: float, leeway: int, verify_exp: bool = True
) -> dict[str, Any]:
    """Return the claims of a token we issued, or raise NotOurToken.

    The header must say `typ: at+jwt` and name one of our kids; the algorithm comes from our
    key, never from the header (RFC 8725 §3.1)."""
    try:
        parsed = read_compact_jws(token, max_bytes=MAX_ACCESS_TOKEN_BYTES)
    except JoseError as err:
        raise NotOurToken(str(err)) from err
    if parsed.header.get("typ") != ACCESS_TOKEN_TYP:
        raise NotOurToken("typ is not at+jwt")
    kid = parsed.header.get("kid")
    key = keyring.get(kid) if isinstance(kid, str) else None
    if key is None or parsed.header.get("alg") != key.alg:
        raise NotOurToken("unknown kid or algorithm")
    if not verify_signature(parsed, key.public_key, key.alg):
        raise NotOurToken("bad signature")
    claims: dict[str, Any] = dict(parsed.payload)  # decoded from the bytes just verified
    for name in ("iss", "sub", "exp", "iat", "jti"):
        if name not in claims:
            raise NotOurToken(f"no {name}")
    if claims["iss"] != issuer:
        raise NotOurToken("not our issuer")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise NotOurToken("exp is not an integer")
    if verify_exp and exp <= now - leeway:
        raise NotOurToken("expired")
    for name in ("jti", "sub", "task_id"):
        if not isinstance(claims.get(name), str):
            raise NotOurToken(f"{name} is not a string")
    return claims
