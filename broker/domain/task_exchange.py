"""What a task's lifecycle asks of the token exchange (docs/agents.md, "Task lifecycle"):
no token for a suspended task or one past its deadline, no token that outlives the deadline,
and a deadline and labels read only when the exchange opens the task. The grant write
(store/lua/save_grant.lua) checks all of it again, atomically with the write."""

from __future__ import annotations

import dataclasses

from broker.domain.exchange_refusals import Refused
from broker.domain.models import Config, ExchangeRequest
from broker.domain.ports import PreflightState
from broker.domain.tasks import TaskSpec, check_deadline
from broker.policy.engine import Decision


def task_spec(req: ExchangeRequest, config: Config, now: float) -> TaskSpec:
    """The deadline and labels the request would open its task with (InvalidRequest if the
    deadline is past or too far ahead)."""
    broker = config.broker
    if req.task_deadline is None:
        return TaskSpec(labels=req.task_labels)
    check_deadline(req.task_deadline, now, broker.task_retention_seconds)
    return TaskSpec(
        deadline=req.task_deadline,
        labels=req.task_labels,
        retain_until=req.task_deadline + broker.task_tombstone_seconds,
    )


def check_task_state(state: PreflightState, now: float) -> None:
    """What the preflight read of the task refuses."""
    if state.task_suspended:
        raise Refused("task_suspended")
    if state.task_deadline is not None and now >= state.task_deadline:
        raise Refused("task_expired")


def cap_to_deadline(
    decision: Decision, spec: TaskSpec, state: PreflightState, now: float
) -> Decision:
    """The lifetime the policy allows, cut so the token dies by the task's deadline (the
    recorded one, or the one this exchange opens the task with)."""
    deadlines = [d for d in (state.task_deadline, spec.deadline) if d is not None]
    if not deadlines:
        return decision
    left = min(deadlines) - int(now)
    if left <= 0:
        raise Refused("task_expired")
    return dataclasses.replace(decision, ttl_seconds=min(decision.ttl_seconds, left))
