"""Revoking one grant: the token's holder or a resource server (RFC 7009), an operator, or a
clean-up job ending a completed task's or a suspended identity's grants."""

from __future__ import annotations

from typing import Any

from broker.domain.access import read_our_token
from broker.domain.ports import Services


def revoke_token(token: str, svc: Services, *, actor: str, request_id: str = "") -> bool:
    """End the grant behind one of our tokens. Unknown or foreign tokens are not an error
    (RFC 7009 §2.2): the answer is the same, so revocation cannot probe for tokens."""
    claims = read_our_token(token, svc, allow_expired=True)
    if claims is None:
        return False
    return revoke_grant(
        claims["jti"],
        svc,
        reason="revoked",
        actor=actor,
        request_id=request_id,
        task_id=claims["task_id"],
        identity=claims["sub"],
    )


def revoke_grant(
    jti: str,
    svc: Services,
    *,
    reason: str,
    actor: str,
    request_id: str = "",
    task_id: str | None = None,
    identity: str | None = None,
) -> bool:
    """Delete the grant, its index entries and publish a feed entry, with its audit event, in
    one script. False when there was nothing to revoke (already gone: idempotent)."""
    event: dict[str, Any] = {
        "ts": svc.clock.now(),
        "event": "grant.revoked",
        "outcome": "revoked",
        "jti": jti,
        "reason": reason,
        "actor": actor,
        "request_id": request_id,
        "task": task_id,
        "identity": identity,
    }
    removed = svc.store.revoke_grant(jti, audit=event)
    if removed is None:
        return False
    event["task"], event["identity"] = removed  # as the grant itself recorded them
    svc.audit.record(event, stored=True)
    return True
