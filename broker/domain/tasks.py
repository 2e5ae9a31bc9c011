"""A task's lifecycle as values: its states, the moves between them, and what it was opened
with (a hard deadline, labels binding it to the outside run). docs/agents.md, "Task
lifecycle", is the reader's version; store/lua/task_transition.lua is the atomic one.

    running <-> suspended          (suspend, resume)
    running | suspended -> completed | failed | cancelled   (terminal: every grant revoked)
    running | suspended -> expired                          (its deadline passed; terminal)

A terminal state is absorbing: nothing leaves it, and asking for the state it is already in
is a no-op, as is any repeated move."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from broker.domain.models import Grant
from broker.errors import InvalidRequest

RUNNING, SUSPENDED = "running", "suspended"
COMPLETED, FAILED, CANCELLED, EXPIRED = "completed", "failed", "cancelled", "expired"
STATES = (RUNNING, SUSPENDED, COMPLETED, FAILED, CANCELLED, EXPIRED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, EXPIRED})

# What a caller asks for (POST /tasks/{id}/<action>) -> the state it leads to. `expired` is
# reached only by the clock.
ACTIONS: dict[str, str] = {
    "suspend": SUSPENDED,
    "resume": RUNNING,
    "complete": COMPLETED,
    "fail": FAILED,
    "cancel": CANCELLED,
}

Outcome = Literal["changed", "same", "illegal"]


def next_outcome(current: str, target: str) -> Outcome:
    """The state machine in one function; task_transition.lua does the same atomically (and
    a property test holds the two together)."""
    if target == current:
        return "same"
    if current in TERMINAL or target not in (RUNNING, SUSPENDED, COMPLETED, FAILED, CANCELLED):
        return "illegal"
    return "changed"


# Labels bind a task to the run outside Errand (a CI job id, an MCP task id, a sandbox run
# id). They reach Redis, the audit and JSON answers, so they are few, short and plain.
MAX_LABELS = 8
LABEL_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}")
LABEL_RULE = (
    f"at most {MAX_LABELS} labels key=value; a key is 1-32 of a-z 0-9 _ . - starting with a "
    "letter, a value 1-128 of A-Z a-z 0-9 . _ : @ + / - starting with a letter or digit"
)


def parse_labels(values: list[str]) -> tuple[tuple[str, str], ...]:
    """`task_label=key=value` parameters, sorted by key; InvalidRequest otherwise."""
    if len(values) > MAX_LABELS:
        raise InvalidRequest(f"task_label: {LABEL_RULE}", reason="bad_task_label")
    labels: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise InvalidRequest(f"task_label: {LABEL_RULE}", reason="bad_task_label")
        if key in labels:
            raise InvalidRequest("task_label: a key is repeated", reason="bad_task_label")
        labels[key] = value
    return tuple(sorted(labels.items()))


def labels_json(labels: tuple[tuple[str, str], ...]) -> str:
    """One spelling per set of labels, so the grant write can compare them as strings."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def check_deadline(deadline: int, now: float, retention_seconds: int) -> None:
    """A deadline is a unix time in the future, at most `retention_seconds` ahead (the
    longest Errand keeps a task's record)."""
    if deadline <= now:
        raise InvalidRequest("task_deadline: the deadline has passed", reason="bad_task_deadline")
    if deadline > now + retention_seconds:
        raise InvalidRequest(
            f"task_deadline: at most {retention_seconds} seconds ahead",
            reason="bad_task_deadline",
        )


@dataclass(frozen=True)
class TaskSpec:
    """What an exchange may open a task with; ignored if the task exists, unless it differs
    from what the task has (then refused: set once, at creation, never extended)."""

    deadline: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    # Until when the task's record (and its owner's name) is kept: its deadline plus a
    # tombstone period, so a task past its deadline is refused, not reopened.
    retain_until: int = 0

    def __bool__(self) -> bool:
        return self.deadline is not None or bool(self.labels)

    def wire(self) -> str:
        """The grant write's last argument (store/lua/save_grant.lua): '' or JSON with the
        deadline, the labels as one string, and until when to keep the task's record."""
        if not self:
            return ""
        doc: dict[str, Any] = {"x": self.retain_until}
        if self.deadline is not None:
            doc["d"] = self.deadline
        if self.labels:
            doc["l"] = labels_json(self.labels)
        return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True)
class TaskRecord:
    """A task as GET /tasks/{id} shows it: never a token, only grant ids and their shape."""

    task_id: str
    state: str
    owner: str | None
    deadline: int | None
    labels: dict[str, str]
    opened_at: int | None
    changed_at: int | None
    grants: tuple[Grant, ...]

    def view(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "state": self.state,
            "owner": self.owner,
            "deadline": self.deadline,
            "labels": self.labels,
            "opened_at": self.opened_at,
            "changed_at": self.changed_at,
            "grants": [
                {
                    "jti": g.jti,
                    "identity": g.identity_id,
                    "audiences": list(g.audiences),
                    "scopes": list(g.scopes),
                    "iat": g.iat,
                    "exp": g.exp,
                }
                for g in self.grants
            ],
            # The delegation chain of the task's tokens; filled by delegation support.
            "chain": [],
        }


@dataclass(frozen=True)
class TransitionResult:
    outcome: Literal["changed", "same", "illegal", "foreign", "unknown"]
    before: str  # the state the task was in ('' when foreign or unknown)
