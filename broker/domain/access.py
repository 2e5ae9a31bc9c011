"""Reading our own access tokens for introspection, revocation and task completion."""

from __future__ import annotations

from typing import Any

from broker.domain.ports import Services
from broker.tokens.verify import NotOurToken, verify_access_token


def read_our_token(
    token: str, svc: Services, *, allow_expired: bool = False
) -> dict[str, Any] | None:
    """Claims of a token Errand signed, or None. Expired tokens pass only when asked."""
    try:
        return verify_access_token(
            token,
            svc.keyring,
            svc.config.broker.issuer,
            now=svc.clock.now(),
            leeway=0,  # our own clock: no skew allowance for our own tokens
            verify_exp=not allow_expired,
        )
    except NotOurToken:
        return None
