"""Audit events as the console shows them: generic, so an event type added later appears
with all its fields and no change here; and nothing that could be a secret.

Events never hold a token, an assertion or a key (they carry hashes: docs/security-model.md);
the field filter below is a second line, should one ever be added by mistake."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# Shown in their own columns, in this order; every other field goes to "details".
LEAD = ("ts", "event", "outcome", "reason", "identity", "actor")
# A field whose name says it may hold a secret is never shown, unless its name says it is a
# hash of one (`token_sha256`, `assertion_hash`).
_SECRET_NAME = re.compile(r"token|assertion|secret|password|private|credential|cookie", re.I)
_HASH_NAME = re.compile(r"(sha256|hash|digest|fingerprint)$", re.I)
MAX_VALUE_CHARS = 300
# Events that end a task, and events that show it running; the latest decides the state.
_ENDING = {"task.completed": "completed", "task.failed": "failed", "task.cancelled": "cancelled"}


def iso(ts: Any) -> str:
    """ISO 8601 UTC for a POSIX time; anything else as text."""
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            pass
    return str(ts)


def is_shown(name: str) -> bool:
    return not _SECRET_NAME.search(name) or bool(_HASH_NAME.search(name))


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def event_rows(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for event in events:
        details = [
            (name, _text(value))
            for name, value in sorted(event.items())
            if name not in LEAD and name != "id" and value not in (None, "") and is_shown(name)
        ]
        rows.append(
            {
                "ts": iso(event.get("ts")),
                **{k: _text(event[k]) for k in LEAD[1:] if event.get(k) not in (None, "")},
                "details": details,
                "denied": event.get("outcome") in ("denied", "refused", "error"),
            }
        )
    return rows


def task_state(events: Sequence[Mapping[str, Any]], *, live_grants: int) -> str:
    """The task's state as its events tell it: a `state` field an event carries (the latest
    wins), else an ending event, else whether it still holds live grants."""
    state = ""
    for event in events:  # oldest first
        name = str(event.get("event", ""))
        if isinstance(event.get("state"), str) and name.startswith("task."):
            state = event["state"]
        elif name in _ENDING:
            state = _ENDING[name]
    if state:
        return state
    return "running (live grants)" if live_grants else "no live grants"
