"""Reading our own access tokens for introspection, revocation and task completion."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from broker.domain.ports import Services
from broker.tokens.verify import NotOurToken, verify_access_token
from errand_jose import read_compact_jws

# Verified claims per token, per process: a signature cannot change, so re-verifying the
# same token on every introspection is wasted ECDSA work. The grant is still read from Redis
# every time, so revocation is unaffected; expiry and the key (an emergency rotation removes
# it) are re-checked on every hit. Bounded, least recently used first out.
_CACHE_SIZE = 10_000
_verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
_lock = threading.Lock()


def _cached(token: str, svc: Services, now: float) -> dict[str, Any] | None:
    with _lock:
        claims = _verified.get(token)
        if claims is not None:
            _verified.move_to_end(token)
    if claims is None or claims["exp"] <= now:
        return None
    if svc.keyring.get(claims["_kid"]) is None or claims["iss"] != svc.config.broker.issuer:
        return None
    return claims


def read_our_token(
    token: str, svc: Services, *, allow_expired: bool = False
) -> dict[str, Any] | None:
    """Claims of a token Errand signed, or None. Expired tokens pass only when asked."""
    now = svc.clock.now()
    if not allow_expired:
        hit = _cached(token, svc, now)
        if hit is not None:
            return hit
    try:
        claims = verify_access_token(
            token,
            svc.keyring,  # type: ignore[arg-type]  # tokens/ names KeyRing; any SigningKeys do
            svc.config.broker.issuer,
            now=now,
            leeway=0,  # our own clock: no skew allowance for our own tokens
            verify_exp=not allow_expired,
        )
    except NotOurToken:
        return None
    if not allow_expired:
        claims["_kid"] = _kid_of(token)
        with _lock:
            _verified[token] = claims
            if len(_verified) > _CACHE_SIZE:
                _verified.popitem(last=False)
    return claims


def _kid_of(token: str) -> str:
    kid = read_compact_jws(token, max_bytes=8192).header.get("kid")
    return kid if isinstance(kid, str) else ""
