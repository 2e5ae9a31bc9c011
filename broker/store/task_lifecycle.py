"""A task's lifecycle in Redis: the atomic transition (lua/task_transition.lua) and the read
behind GET /tasks/{id}.

A task's state is spread over keys that already exist for other reasons, plus one small hash
only some tasks have (keys.task_state):

    tombstone (task-done)  present: terminal; its value names the state ('failed 1800000000')
    task-state hash        s: suspended | running, d: deadline, l: labels, c: opened, t: changed
    owner (task-owner)     the identity that opened it; present while the task is alive
    task index             its grants

So a plain running task costs nothing more than before."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from broker.domain.tasks import (
    COMPLETED,
    EXPIRED,
    RUNNING,
    STATES,
    SUSPENDED,
    TaskRecord,
    TransitionResult,
)
from broker.store import keys, lua_scripts
from broker.store.audit_stream import event_json
from broker.store.connection import NO_WAIT, ReplicaWait, store_errors
from broker.store.grant_record import grant_from

OUTCOMES = ("changed", "same", "illegal", "foreign", "unknown")


@dataclass(frozen=True)
class Move:
    """One transition_task call, as the script (or a cluster's two) that carries it out
    reads it."""

    task_id: str
    target: str
    identity_id: str | None
    audit: Mapping[str, Any]
    now: int
    tombstone_seconds: int
    suspension_seconds: int
    feed_expiry: int
    skew_seconds: int


def terminal_state(tombstone: str | None) -> str | None:
    """The state a tombstone names; one written before tasks had states is a completion."""
    if tombstone is None:
        return None
    word = tombstone.split(" ", 1)[0]
    return word if word in STATES else COMPLETED


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class RedisTaskLifecycle:
    """The TaskStore port (domain/ports.py); RedisGrants mixes it in."""

    _r: redis.Redis
    _audit_maxlen: str
    _wait: ReplicaWait = NO_WAIT

    def _init_tasks(self, client: redis.Redis) -> None:
        self._transition = client.register_script(lua_scripts.TASK_TRANSITION)

    @store_errors()
    def transition_task(
        self,
        task_id: str,
        *,
        target: str,
        identity_id: str | None,
        audit: Mapping[str, Any],
        now: int,
        tombstone_seconds: int,
        suspension_seconds: int,
        feed_expiry: int,
        skew_seconds: int,
    ) -> TransitionResult:
        """Move the task to `target` if its owner (`identity_id`; None for an operator) may.
        A terminal move's feed entry covers tokens with iat up to now + skew: no token of the
        task can be issued after the tombstone, and a node whose clock runs ahead may have
        stamped an earlier one with a later iat."""
        move = Move(
            task_id,
            target,
            identity_id,
            audit,
            now,
            tombstone_seconds,
            suspension_seconds,
            feed_expiry,
            skew_seconds,
        )
        outcome, before = self._move(move)
        if outcome not in OUTCOMES:
            raise ValueError(f"{self._transition_script} answered {outcome!r}")
        return TransitionResult(outcome=outcome, before=str(before))

    _transition_script = "task_transition.lua"  # what a strange answer names

    def _move(self, move: Move) -> tuple[Any, Any]:
        """The move in one script (lua/task_transition.lua): the outcome and the state
        before."""
        task_id = move.task_id
        outcome, before = self._wait.run(
            self._transition,
            keys=[
                keys.task_tombstone(task_id),
                keys.COMPLETING,
                keys.AUDIT_STREAM,
                keys.REVOCATION_FEED,
                keys.task_owner(task_id),
                keys.task_state(task_id),
                keys.task_index(task_id),
                keys.TASKS_OPEN,
                keys.TASKS_COMPLETED,
            ],
            args=[
                move.target,
                move.now,
                self._audit_maxlen,
                event_json(move.audit),
                task_id,
                move.identity_id or "",
                move.tombstone_seconds,
                move.now + move.skew_seconds,
                move.suspension_seconds,
                move.feed_expiry,
            ],
            what=f"{move.target} of task {task_id}",
        )
        return outcome, before

    @store_errors()
    def task_terminal_state(self, task_id: str) -> str | None:
        return terminal_state(cast(str | None, self._r.get(keys.task_tombstone(task_id))))

    @store_errors()
    def task_record(self, task_id: str, *, now: int, limit: int) -> TaskRecord | None:
        pipe = self._r.pipeline(transaction=False)
        pipe.get(keys.task_tombstone(task_id))
        pipe.hgetall(keys.task_state(task_id))
        pipe.get(keys.task_owner(task_id))
        pipe.zrangebyscore(keys.task_index(task_id), now + 1, "+inf", start=0, num=limit)
        tombstone, fields, owner, jtis = pipe.execute()
        fields = cast(dict[str, str], fields)
        jtis = cast(list[str], jtis)
        if tombstone is None and not fields and owner is None and not jtis:
            return None
        pipe = self._r.pipeline(transaction=False)
        for jti in jtis:
            pipe.hgetall(keys.grant(jti))
        found = [grant_from(j, r) for j, r in zip(jtis, pipe.execute(), strict=True) if r]
        deadline = _int(fields.get("d"))
        state = terminal_state(tombstone)
        if state is None:
            if deadline is not None and now >= deadline:
                state = EXPIRED
            else:
                state = SUSPENDED if fields.get("s") == SUSPENDED else RUNNING
        labels = json.loads(fields["l"]) if fields.get("l") else {}
        return TaskRecord(
            task_id=task_id,
            state=state,
            owner=owner or (found[0].identity_id if found and found[0] else None),
            deadline=deadline,
            labels=labels if isinstance(labels, dict) else {},
            opened_at=_int(fields.get("c")),
            changed_at=_int(fields.get("t") or (tombstone or "").rpartition(" ")[2]),
            grants=tuple(g for g in found if g is not None),
        )
