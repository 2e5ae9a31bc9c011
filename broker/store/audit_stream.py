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

from broker.domain.audit_hmac import redact
from broker.domain.audit_shape import ShapedEvent
from broker.store import keys
from broker.store.connection import store_errors


def event_json(event: Mapping[str, Any]) -> str:
    """The event as the stream stores it: compact JSON, credentials and jtis as HMACs (for a
    shaped event, the text bounded_event already encoded, already redacted:
    broker/domain/audit_shape.py)."""
    if isinstance(event, ShapedEvent) and event.json_text is not None:
        return event.json_text
    return json.dumps(redact(event), separators=(",", ":"))


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
    def audit_events(
        self,
        *,
        task_id: str | None,
        limit: int,
        where: Mapping[str, str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first. A search scans the bounded stream between `until` and `since`
        (entry ids are times), at most AUDIT_SCAN entries: an operator query. `where`:
        field -> value, every one must match (a list field matches if it holds the value)."""
        wanted = dict(where or {})
        if task_id is not None:
            wanted["task"] = task_id
        out: list[dict[str, Any]] = []
        last = "+" if until is None else f"{int(until * 1000)}-{2**63 - 1}"
        low = "-" if since is None else f"{max(int(since * 1000), 0)}-0"
        scanned = 0
        while len(out) < limit and scanned < AUDIT_SCAN:
            page = cast(
                list[tuple[str, dict[str, str]]],
                self._r.xrevrange(keys.AUDIT_STREAM, max=last, min=low, count=1000),
            )
            if not page:
                break
            for entry_id, fields in page:
                scanned += 1
                try:
                    event = json.loads(fields.get("e", "{}"))
                except ValueError:
                    continue
                if isinstance(event, dict) and _matches(event, wanted):
                    event["id"] = entry_id
                    out.append(event)
                    if len(out) >= limit:
                        break
            last = "(" + page[-1][0]
        return out


AUDIT_SCAN = 200_000  # entries one search reads at most (docs/audit.md, "Searching")


def _matches(event: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    for name, value in wanted.items():
        have = event.get(name)
        if isinstance(have, list):
            if value not in [str(v) for v in have]:
                return False
        elif have is None or str(have) != value:
            return False
    return True
