"""The audit stream in Redis (keys.AUDIT_STREAM): a bounded stream of decisions, one JSON
event per entry.

Writes that change state record their event in the same script or transaction as the change
(store/grants.py, store/inventory_state.py, store/revocations.py), so an event exists exactly
when its change does. `append_audit` is for the decisions that change nothing else."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import redis

from broker.domain.audit_shape import ShapedEvent
from broker.store import keys
from broker.store.connection import store_errors


def event_json(event: Mapping[str, Any]) -> str:
    """The event as the stream stores it: compact JSON (for a shaped event, the text
    bounded_event already encoded: broker/domain/audit_shape.py)."""
    if isinstance(event, ShapedEvent) and event.json_text is not None:
        return event.json_text
    return json.dumps(event, separators=(",", ":"))


class RedisAuditStream:
    def __init__(self, client: redis.Redis, *, audit_maxlen: int) -> None:
        self._r = client
        self._audit_maxlen = str(audit_maxlen)  # the bound, kept approximately (MAXLEN ~)

    def _add_audit(self, client: Any, event: Mapping[str, Any]) -> None:
        """XADD the event on `client`, the connection or a pipeline of it."""
        client.xadd(
            keys.AUDIT_STREAM,
            {"e": event_json(event)},
            maxlen=int(self._audit_maxlen),
            approximate=True,
        )

    @store_errors()
    def append_audit(self, event: Mapping[str, Any]) -> None:
        self._add_audit(self._r, event)

    @store_errors()
    def audit_events(self, *, task_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first. Filtering by task scans the bounded stream (an operator query)."""
        out: list[dict[str, Any]] = []
        last = "+"
        while len(out) < limit:
            page = cast(
                list[tuple[str, dict[str, str]]],
                self._r.xrevrange(keys.AUDIT_STREAM, max=last, min="-", count=1000),
            )
            if not page:
                break
            for entry_id, fields in page:
                try:
                    event = json.loads(fields.get("e", "{}"))
                except ValueError:
                    continue
                if task_id is None or event.get("task") == task_id:
                    event["id"] = entry_id
                    out.append(event)
                    if len(out) >= limit:
                        break
            last = "(" + page[-1][0]
        return out
