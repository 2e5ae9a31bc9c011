"""The identity inventory's lifecycle: suspend, reinstate, offboard, and the access review.

The inventory itself is the configuration file (reloadable, see broker/reload.py). What an
operator decides at run time lives in Redis, because it must hold on every node at once:

- **suspended**: no token is issued (the exchange checks on every request, before and after
  the grant write) and every live grant of the identity is revoked. Reversible.
- **offboarded**: suspended for good and removed from the effective inventory: the review
  no longer lists it as active and nothing can reinstate it (a returning workload gets a new
  identity id). The audit trail of the identity is kept.

Every change is written together with its audit event."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, cast

from broker.domain.models import Config, Identity
from broker.domain.ports import Services, StoreUnavailable
from broker.domain.revocation import revoke_grant
from broker.errors import InvalidRequest, NotFound, TemporarilyUnavailable

log = logging.getLogger(__name__)

SUSPENDED = "suspended"
OFFBOARDED = "offboarded"
MAX_REVOKE_PASSES = 3


class InventoryStore(Protocol):
    def identity_state(self, identity_id: str) -> dict[str, Any] | None: ...

    def identity_states(self) -> dict[str, dict[str, Any]]: ...

    def set_identity_state(
        self, identity_id: str, record: Mapping[str, Any] | None, *, audit: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...

    def identity_grant_ids(self, identity_id: str) -> list[str]: ...

    def live_grant_counts(self, identity_ids: list[str], *, now: int) -> dict[str, int]: ...

    def last_exchanges(self) -> dict[str, float]: ...


def inventory_store(svc: Services) -> InventoryStore:
    return cast(InventoryStore, svc.store)


def state_name(record: dict[str, Any]) -> str:
    """An identity state record names "offboarded"; anything else present is a suspension."""
    return OFFBOARDED if record.get("state") == OFFBOARDED else SUSPENDED


def _known(svc: Services, identity_id: str) -> bool:
    if svc.config.identity(identity_id) is not None:
        return True
    store = inventory_store(svc)
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
    store = inventory_store(svc)
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
    try:
        previous = inventory_store(svc).set_identity_state(identity_id, record, audit=event)
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
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
    try:
        known = _known(svc, identity_id)
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
    if not known:
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


# -- access review ---------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def review_row(
    identity: Identity,
    config: Config,
    *,
    state: Mapping[str, Any] | None,
    last_exchange: float | None,
    live_grants: int,
    now: float,
    dormant_days: int,
    expiring_days: int,
) -> dict[str, Any]:
    today: date = datetime.fromtimestamp(now, UTC).date()
    flags: list[str] = []
    if last_exchange is None:
        flags += ["never_used", "dormant"]
    elif now - last_exchange > dormant_days * 86400:
        flags.append("dormant")
    if identity.expires is None:
        flags.append("no_expiry")
    elif identity.expires < today:
        flags.append("expired")
    elif identity.expires <= today + timedelta(days=expiring_days):
        flags.append("expiring_soon")
    state_name = (state or {}).get("state")
    if state_name in (SUSPENDED, OFFBOARDED):
        flags.append(str(state_name))
    rules = config.type_rules(identity.type)
    return {
        "id": identity.id,
        "type": identity.type,
        "owner": identity.owner,
        "purpose": identity.purpose,
        "state": state_name or "active",
        "expires": identity.expires.isoformat() if identity.expires else None,
        "last_exchange": _iso(last_exchange),
        "days_since_last_exchange": (
            None if last_exchange is None else int((now - last_exchange) // 86400)
        ),
        "live_grants": live_grants,
        "issuers": sorted({r.issuer_id for r in identity.rules}),
        "own_keys": identity.keys is not None,
        "allowances": {
            "audiences": list(identity.allow.audiences),
            "scopes": list(identity.allow.scopes),
            "default_scopes": list(identity.allow.default_scopes),
            "max_ttl_seconds": min(
                identity.allow.max_ttl_seconds,
                rules.max_ttl_seconds,
                config.broker.max_token_ttl_seconds,
            ),
        },
        "flags": flags,
    }


def access_review(
    svc: Services,
    *,
    dormant_days: int = 90,
    expiring_days: int = 30,
    include_offboarded: bool = False,
) -> dict[str, Any]:
    """Per identity: type, owner, purpose, allowances, expiry, last exchange, live grants and
    flags (dormant, never_used, expiring_soon, expired, no_expiry, suspended, offboarded)."""
    config: Config = svc.config
    now = svc.clock.now()
    store = inventory_store(svc)
    try:
        states = store.identity_states()
        last = store.last_exchanges()
        ids = sorted({i.id for i in config.identities} | set(states))
        live = store.live_grant_counts(ids, now=int(now))
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
    rows = []
    for identity in config.identities:
        row = review_row(
            identity,
            config,
            state=states.get(identity.id),
            last_exchange=last.get(identity.id),
            live_grants=live.get(identity.id, 0),
            now=now,
            dormant_days=dormant_days,
            expiring_days=expiring_days,
        )
        if row["state"] == OFFBOARDED:
            row["flags"].append("still_in_configuration")
            if not include_offboarded:
                continue
        rows.append(row)
    in_config = {i.id for i in config.identities}
    offboarded = [
        {
            "id": i,
            **{k: v for k, v in states[i].items() if k != "state"},
            "live_grants": live.get(i, 0),
            "in_configuration": i in in_config,
        }
        for i in sorted(states)
        if states[i].get("state") == OFFBOARDED
    ]
    not_in_config = [
        {"id": i, "state": states[i].get("state"), "live_grants": live.get(i, 0)}
        for i in sorted(states)
        if i not in in_config and states[i].get("state") != OFFBOARDED
    ]
    summary: dict[str, int] = {"identities": len(rows)}
    for row in rows:
        for flag in row["flags"]:
            summary[flag] = summary.get(flag, 0) + 1
    return {
        "generated_at": _iso(now),
        "dormant_days": dormant_days,
        "expiring_days": expiring_days,
        "identities": rows,
        "offboarded": offboarded,
        "suspended_not_in_configuration": not_in_config,
        "summary": summary,
    }
