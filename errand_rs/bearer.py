"""Framework-neutral glue: read the bearer token (RFC 6750 §2.1), verify it, check it against
the revocation feed, and log the denial (reason and a token fingerprint, never the token)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from errand_rs.dpop import bound_jkt
from errand_rs.errors import BearerError, InvalidRequest, InvalidToken, MissingToken
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ErrandVerifier, VerifiedToken, token_fingerprint

log = logging.getLogger("errand_rs")


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header.

    Only the header is read: a token in a query string ends up in access logs (RFC 6750 §5.3).
    No header, or another scheme, is MissingToken (RFC 6750 §3.1: no error code); a Bearer
    header without exactly one token is InvalidRequest (400)."""
    if not authorization:
        raise MissingToken()
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken()
    token = rest.strip()
    if not token or any(c.isspace() for c in token) or "," in token:
        raise InvalidRequest()
    return token


def authenticate(
    verifier: ErrandVerifier,
    feed: RevocationFeed | None,
    authorization: str | None,
    required_scopes: Iterable[str] | str | None = (),
    *,
    context: str = "",
) -> VerifiedToken:
    """The verified token of a request, or a BearerError to render."""
    token: str | None = None
    try:
        token = bearer_token(authorization)
        verified = verifier.verify(token, require_scopes=required_scopes, feed=feed)
        if bound_jkt(verified) is not None:
            # RFC 9449 §7.1: a DPoP-bound token is never good as a bearer token, whoever holds it.
            raise InvalidToken(
                "The access token is bound to a key: use the DPoP scheme with a proof.",
                reason="dpop_bound_as_bearer",
            )
        return verified
    except BearerError as err:
        log.info(
            "errand_rs: bearer token rejected",
            extra={
                "errand_reason": err.reason,
                "errand_status": err.status_code,
                "errand_token_sha256": token_fingerprint(token) if token else None,
                "errand_context": context,
            },
        )
        raise
