"""Approvals in Redis: one hash per approval (keys.approval) and the pending index
(keys.APPROVALS_PENDING, zset id -> expires_at).

The hash lives LINGER_SECONDS past the approval's expiry, so a late poll still hears
`expired_token` and an operator can still read who decided; then Redis drops it. Every state
change is one atomic step: creation in MULTI/EXEC, polls, decisions and the spending of an
approved approval in Lua (lua/approval_*.lua)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import cast

import redis

from broker.domain.ports import Approval
from broker.store import keys, lua_scripts
from broker.store.connection import store_errors

LINGER_SECONDS = 3600


def _fields(a: Approval) -> Mapping[str | bytes | int | float, str]:
    return {
        "state": a.state,
        "identity": a.identity_id,
        "owner": a.owner,
        "task": a.task_id,
        "audiences": json.dumps(list(a.audiences), separators=(",", ":")),
        "scopes": " ".join(a.scopes),
        "purpose": a.purpose,
        "created_at": str(a.created_at),
        "expires_at": str(a.expires_at),
        "interval": str(a.interval),
        "policies": " ".join(a.policies),
    }


def _approval(approval_id: str, h: Mapping[str, str]) -> Approval | None:
    try:
        return Approval(
            id=approval_id,
            state=h["state"],
            identity_id=h["identity"],
            owner=h["owner"],
            task_id=h["task"],
            audiences=tuple(json.loads(h["audiences"])),
            scopes=tuple(h["scopes"].split()),
            purpose=h["purpose"],
            created_at=int(h["created_at"]),
            expires_at=int(h["expires_at"]),
            interval=int(h["interval"]),
            policies=tuple(h.get("policies", "").split()),
            approver=h.get("approver", ""),
            reason=h.get("reason", ""),
            decided_at=int(h.get("decided_at") or 0),
        )
    except (KeyError, ValueError):
        return None


class RedisApprovals:
    """ApprovalStore on Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._poll = client.register_script(lua_scripts.APPROVAL_POLL)
        self._decide = client.register_script(lua_scripts.APPROVAL_DECIDE)
        self._consume = client.register_script(lua_scripts.APPROVAL_CONSUME)

    @store_errors()
    def create(self, approval: Approval) -> None:
        key = keys.approval(approval.id)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=dict(_fields(approval)))  # type: ignore[arg-type]
        pipe.expireat(key, approval.expires_at + LINGER_SECONDS)
        pipe.zadd(keys.APPROVALS_PENDING, {approval.id: approval.expires_at})
        pipe.zremrangebyscore(keys.APPROVALS_PENDING, "-inf", approval.created_at)
        pipe.execute()

    @store_errors()
    def get(self, approval_id: str) -> Approval | None:
        h = cast(Mapping[str, str], self._r.hgetall(keys.approval(approval_id)))
        return _approval(approval_id, h) if h else None

    @store_errors()
    def poll(self, approval_id: str, *, now: int, interval: int) -> tuple[str, bool]:
        state, slow = self._poll(keys=[keys.approval(approval_id)], args=[now, interval])
        return str(state), int(slow) == 1

    @store_errors()
    def decide(self, approval_id: str, *, state: str, approver: str, reason: str, now: int) -> str:
        return str(
            self._decide(
                keys=[keys.approval(approval_id), keys.APPROVALS_PENDING],
                args=[approval_id, state, approver, reason, now],
            )
        )

    @store_errors()
    def consume(self, approval_id: str, *, now: int) -> str:
        return str(self._consume(keys=[keys.approval(approval_id)], args=[now]))

    @store_errors()
    def pending(self, *, now: int, limit: int) -> list[Approval]:
        ids = cast(list[str], self._r.zrangebyscore(keys.APPROVALS_PENDING, now, "+inf"))
        out = []
        for approval_id in ids[:limit]:
            found = self.get(approval_id)
            if found is not None and found.state == "pending":
                out.append(found)
        return out
