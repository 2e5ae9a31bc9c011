"""errand_rs: the resource-server side of Errand.

Verify Errand's RFC 9068 access tokens offline against the broker's JWKS, and learn of
revocations within a second from the broker's revocation feed. See docs/resource-servers.md.

    from errand_rs import ErrandVerifier, RevocationFeed
    from errand_rs.flask import ErrandAuth          # Flask
    from errand_rs.wsgi import ErrandMiddleware     # any WSGI app
    from errand_rs import DpopChecker               # DPoP-bound tokens (RFC 9449)

This package imports nothing from `broker`: a resource server needs only PyJWT, cryptography
and requests (and Flask for the Flask extension)."""

from errand_rs.bearer import authenticate, bearer_token
from errand_rs.dpop import (
    DpopChallenge,
    DpopChecker,
    InvalidDpopProof,
    MemoryReplayCache,
    authenticate_dpop,
)
from errand_rs.errors import (
    BearerError,
    FeedUnavailable,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
    TokenRevoked,
)
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ALLOWED_ALGORITHMS, ErrandVerifier, VerifiedToken
from errand_rs.wsgi import ErrandMiddleware

__all__ = [
    "ALLOWED_ALGORITHMS",
    "BearerError",
    "DpopChallenge",
    "DpopChecker",
    "ErrandMiddleware",
    "ErrandVerifier",
    "FeedUnavailable",
    "InsufficientScope",
    "InvalidDpopProof",
    "InvalidRequest",
    "InvalidToken",
    "KeysUnavailable",
    "MemoryReplayCache",
    "MissingToken",
    "RevocationFeed",
    "TokenRevoked",
    "VerifiedToken",
    "authenticate",
    "authenticate_dpop",
    "bearer_token",
]
