"""Identity lifecycle state in Redis, for broker/domain/inventory.py: suspension and
offboarding records, the time of each identity's last exchange, and live-grant counts.

keys.IDENTITY_STATE and keys.LAST_EXCHANGE hold one field per identity of the inventory and
have no TTL, by design: a suspension must not lapse by itself. The grant write
(lua/save_grant.lua) reads the first and writes the second in the same script."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import redis

from broker.store import keys
from broker.store.audit_stream import RedisAuditStream
from broker.store.connection import store_errors


def state_record(raw: Any) -> dict[str, Any] | None:
    """The stored record of an identity's state, None when it has none (it is active)."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        # Unreadable but present: treat it as suspended, never as active (fail closed).
        return {"state": "suspended", "reason": "unreadable state record"}
    if not isinstance(record, dict):
        return {"state": "suspended", "reason": "unreadable state record"}
    return record


class RedisInventoryState(RedisAuditStream):
    """domain/inventory.py's InventoryStore on Redis."""

    @store_errors()
    def identity_state(self, identity_id: str) -> dict[str, Any] | None:
        """The suspension or offboarding record of an identity, None when it is active."""
        return state_record(self._r.hget(keys.IDENTITY_STATE, identity_id))

    @store_errors()
    def identity_states(self) -> dict[str, dict[str, Any]]:
        raw = cast(Mapping[str, str], self._r.hgetall(keys.IDENTITY_STATE))
        out: dict[str, dict[str, Any]] = {}
        for identity_id, value in raw.items():
            record = state_record(value)
            if record is not None:
                out[str(identity_id)] = record
        return out

    @store_errors()
    def set_identity_state(
        self, identity_id: str, record: Mapping[str, Any] | None, *, audit: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Set (or clear, record=None) an identity's state with its audit event, atomically.

        Offboarding is terminal: once the stored state is "offboarded" nothing changes it,
        whoever races. Returns the previous record (the stored one if it was offboarded)."""
        previous: dict[str, Any] | None = None

        def transition(pipe: Any) -> None:
            nonlocal previous
            previous = state_record(pipe.hget(keys.IDENTITY_STATE, identity_id))
            if previous is not None and previous.get("state") == "offboarded":
                return
            # A MULTI does not stop at a failed command: check the audit stream first, so a
            # state never changes without its event (store_errors answers AuditUnavailable).
            kind = pipe.type(keys.AUDIT_STREAM)
            if kind not in ("none", "stream", b"none", b"stream"):
                raise redis.ResponseError(f"ERRAND_AUDIT {keys.AUDIT_STREAM} holds a {kind}")
            pipe.multi()
            if record is None:
                pipe.hdel(keys.IDENTITY_STATE, identity_id)
            else:
                pipe.hset(
                    keys.IDENTITY_STATE,
                    identity_id,
                    json.dumps(dict(record), separators=(",", ":")),
                )
            self._add_audit(pipe, audit)

        # WATCH the state: a change landing between the read and the write retries it.
        self._r.transaction(transition, keys.IDENTITY_STATE)
        return previous

    @store_errors()
    def identity_grant_ids(self, identity_id: str) -> list[str]:
        members = self._r.zrange(keys.identity_index(identity_id), 0, -1)
        return [str(m) for m in members]

    @store_errors()
    def live_grant_counts(self, identity_ids: list[str], *, now: int) -> dict[str, int]:
        pipe = self._r.pipeline(transaction=False)
        for identity_id in identity_ids:
            pipe.zcount(keys.identity_index(identity_id), now + 1, "+inf")
        counts = pipe.execute()
        return {i: int(c) for i, c in zip(identity_ids, counts, strict=True)}

    @store_errors()
    def last_exchanges(self) -> dict[str, float]:
        raw = cast(Mapping[str, str], self._r.hgetall(keys.LAST_EXCHANGE))
        out: dict[str, float] = {}
        for identity_id, value in raw.items():
            try:
                out[str(identity_id)] = float(value)
            except ValueError:
                continue
        return out
