"""Mint RFC 9068 JWT access tokens."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from broker.domain.models import Grant, act_claim
from broker.tokens.keyring import KeyRing
from errand_jose.sign import header_segment, sign_compact

ACCESS_TOKEN_TYP = "at+jwt"  # RFC 9068 §2.1: stops an access token passing as an ID token


def access_token_claims(grant: Grant, issuer: str) -> dict[str, Any]:
    """RFC 9068 §2.2 claims plus Errand's task binding (`task_id`, `identity_type`)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": grant.subject_id,  # a delegation hop's subject; its actor is client_id
        "aud": grant.audiences[0] if len(grant.audiences) == 1 else list(grant.audiences),
        "exp": grant.exp,
        "iat": grant.iat,
        "jti": grant.jti,
        "client_id": grant.client_id,
        "scope": " ".join(grant.scopes),
        "task_id": grant.task_id,
        "identity_type": grant.identity_type,
        "owner": grant.owner,
        "epoch": grant.epoch,
    }
    if grant.dpop_jkt:
        claims["cnf"] = {"jkt": grant.dpop_jkt}  # RFC 9449 §6.1: bound to the client's key
    if grant.approval_id:  # the person's approval this token was issued under
        claims["approval_id"] = grant.approval_id
    act = act_claim(grant.actors)
    if act is not None:
        claims["act"] = act  # RFC 8693 §4.1
    if grant.may_act:
        claims["may_act"] = {"sub": grant.may_act}  # RFC 8693 §4.4
    return claims


MAX_MINTED_BYTES = 8192  # well under verify.MAX_ACCESS_TOKEN_BYTES and common header limits


class TokenTooLarge(ValueError):
    """The requested audiences and scopes would not fit in a token anyone could send."""


def mint_access_token(grant: Grant, keyring: KeyRing, issuer: str) -> str:
    key = keyring.active
    token = sign_compact(
        _header_segment(key.kid, key.alg),
        access_token_claims(grant, issuer),
        key.private_key,
        key.alg,
    )
    if len(token) > MAX_MINTED_BYTES:
        raise TokenTooLarge(f"{len(token)} bytes")
    return token


@lru_cache(maxsize=64)
def _header_segment(kid: str, alg: str) -> str:
    """The protected header of every token one key signs, encoded once: the JSON PyJWT's
    `jwt.encode` wrote (sorted keys, compact), so tokens read exactly as before."""
    return header_segment({"alg": alg, "kid": kid, "typ": ACCESS_TOKEN_TYP})
