"""The identity inventory's lifecycle: suspend, reinstate, offboard (the access review is
broker/domain/access_review.py).

The inventory itself is the configuration file (reloadable, see broker/reload.py). What an
operator decides at run time lives in Redis, because it must hold on every node at once:

- **suspended**: no token is issued (the exchange checks on every request, before and after
  the grant write) and every live grant of the identity is revoked. Reversible.
- **offboarded**: suspended for good and removed from the effective inventory: the review
  no longer lists it as active and nothing can reinstate it (a returning workload gets a new
  identity id). The audit trail of the identity is kept.

Every change is written together with its audit event."""

from __future__ import annotations

from typing import Any

from broker.domain.identity_state import OFFBOARDED, SUSPENDED
from broker.domain.ports import Services
from broker.domain.token_revocation import revoke_grant
from broker.errors import InvalidRequest, NotFound

MAX_REVOKE_PASSES = 3


def _known(svc: Services, identity_id: str) -> bool:
    if svc.config.identity(identity_id) is not None:
        return True
    store = svc.inventory
    # An identity removed from the file may still hold live grants or a state record.
    return store.identity_state(identity_id) is not None or bool(
        store.identity_grant_ids(identity_id)
    )


def revoke_identity_grants(
    svc: Services, identity_id: str, *, reason: str, actor: str, request_id: str = ""
) -> int:
    """Revoke every grant in the identity's index (each with its own audit event). A racing
    exchange either sees the state and is refused, or its grant is in the index by now, or
    it re-checks after its write and revokes its own grant: none survives."""
    store = svc.inventory
    revoked = 0
    for _ in range(MAX_REVOKE_PASSES):
        jtis = store.identity_grant_ids(identity_id)
        if not jtis:
            break
        for jti in jtis:
            if revoke_grant(
                jti, svc, reason=reason, actor=actor, request_id=request_id, identity=identity_id
            ):
                revoked += 1
    return revoked


def _change_state(
    svc: Services,
    identity_id: str,
    *,
    state: str | None,
    event_name: str,
    actor: str,
    reason: str,
    request_id: str,
) -> dict[str, Any] | None:
    now = svc.clock.now()
    record = (
        None if state is None else {"state": state, "at": now, "actor": actor, "reason": reason}
    )
    identity = svc.config.identity(identity_id)
    event = {
        "ts": now,
        "event": event_name,
        "outcome": state or "active",
        "identity": identity_id,
        "owner": identity.owner if identity else None,
        "actor": actor,
        "reason": reason,
        "request_id": request_id,
    }
    previous = svc.inventory.set_identity_state(identity_id, record, audit=event)
    if previous is not None and previous.get("state") == OFFBOARDED:
        if state is not None:
            return previous  # already blocked for good: suspending or offboarding again is a no-op
        raise InvalidRequest(
            "the identity is offboarded; offboarding cannot be undone (register a new identity)",
            reason="identity_offboarded",
        )
    svc.audit.record(event, stored=True)
    return previous


def _check_target(svc: Services, identity_id: str) -> None:
    if not _known(svc, identity_id):
        raise NotFound("no such identity in the inventory", reason="unknown_identity")


def suspend_identity(
    svc: Services, identity_id: str, *, actor: str, reason: str = "", request_id: str = ""
) -> dict[str, Any]:
    """Stop issuance at once and revoke the identity's live grants. Idempotent."""
    _check_target(svc, identity_id)
    previous = _change_state(
        svc,
        identity_id,
        state=SUSPENDED,
        event_name="identity.suspended",
        actor=actor,
        reason=reason,
        request_id=request_id,
    )
    state = OFFBOARDED if previous and previous.get("state") == OFFBOARDED else SUSPENDED
    revoked = revoke_identity_grants(
        svc, identity_id, reason="identity_suspended", actor=actor, request_id=request_id
    )
    return {"identity": identity_id, "state": state, "revoked": revoked}


def unsuspend_identity(
    svc: Services, identity_id: str, *, actor: str, reason: str = "", request_id: str = ""
) -> dict[str, Any]:
    """Reinstate a suspended identity (its revoked grants stay revoked). Offboarded: refused."""
    _check_target(svc, identity_id)
    _change_state(
        svc,
        identity_id,
        state=None,
        event_name="identity.unsuspended",
        actor=actor,
        reason=reason,
        request_id=request_id,
    )
    return {"identity": identity_id, "state": "active"}


def offboard_identity(
    svc: Services, identity_id: str, *, actor: str, reason: str = "", request_id: str = ""
) -> dict[str, Any]:
    """Suspend for good, revoke every live grant, and drop it from the effective inventory."""
    _check_target(svc, identity_id)
    _change_state(
        svc,
        identity_id,
        state=OFFBOARDED,
        event_name="identity.offboarded",
        actor=actor,
        reason=reason,
        request_id=request_id,
    )
    revoked = revoke_identity_grants(
        svc, identity_id, reason="identity_offboarded", actor=actor, request_id=request_id
    )
    return {"identity": identity_id, "state": OFFBOARDED, "revoked": revoked}
