"""The access review: per identity, what it may do, whether it is used, and what needs an
owner's attention (dormant, never used, expiring, expired, no expiry, suspended,
offboarded). Read-only: it changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from broker.domain.identity_state import OFFBOARDED, SUSPENDED
from broker.domain.models import Config, Identity
from broker.domain.ports import Services


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
    store = svc.inventory
    states = store.identity_states()
    last = store.last_exchanges()
    ids = sorted({i.id for i in config.identities} | set(states))
    live = store.live_grant_counts(ids, now=int(now))
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
