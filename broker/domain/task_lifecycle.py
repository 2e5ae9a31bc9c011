"""Moving a task through its lifecycle (domain/tasks.py) for its owner or an operator, and
showing it. docs/agents.md, "Task lifecycle".

Who may: the task's owner, proving itself with a token of the task (its grant still
stored and of the current epoch, not expired; a suspended task's tokens count, or the owner
could never resume), or an operator with the admin credential. The owner check itself is in
the transition script, against the owner recorded when the task opened. A DPoP-bound token
speaks only with a proof of its key (domain/token_presentation.py).

Every move is audited: a change in the same script that makes it, a refusal as a denial, a
repeat (a no-op) as a log line."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from broker.domain.access import read_our_token
from broker.domain.denials import note_denial
from broker.domain.introspection import grant_state, is_live
from broker.domain.ports import Services
from broker.domain.tasks import ACTIONS, RUNNING, SUSPENDED, TERMINAL, TaskRecord
from broker.domain.token_presentation import PresentedToken, check_presentation
from broker.errors import AccessDenied, Conflict, InvalidToken, NotFound

log = logging.getLogger(__name__)

# The audit event of a move to each state.
EVENTS = {
    SUSPENDED: "task.suspended",
    RUNNING: "task.resumed",
    "completed": "task.completed",
    "failed": "task.failed",
    "cancelled": "task.cancelled",
}
GRANTS_SHOWN = 100


@dataclass(frozen=True)
class TaskCaller:
    """Who asks: the owner (by a token of the task) or an operator (`identity` None)."""

    identity: str | None
    actor: str  # for the audit: the identity, or the operator's label
    jti: str | None = None

    @classmethod
    def operator(cls, label: str) -> TaskCaller:
        return cls(identity=None, actor=label)


def owner_from_token(
    token: str | PresentedToken, task_id: str | None, svc: Services
) -> tuple[TaskCaller, str]:
    """The caller a token of the task proves, and the task it names. `task_id` None: the
    token's own task (POST /tasks/complete). A bare string is a token presented as Bearer,
    so a DPoP-bound one is refused without the request's proof (domain/token_presentation.py)."""
    presented = token if isinstance(token, PresentedToken) else PresentedToken(token)
    claims = read_our_token(presented.token, svc)
    if claims is None:
        raise InvalidToken("the access token is invalid or expired")
    check_presentation(claims, presented, svc)
    if task_id is not None and claims["task_id"] != task_id:
        raise AccessDenied("the token is for another task", reason="task_mismatch")
    if "act" in claims:
        # A delegation hop acts for the task's owner (domain/delegation.py); it does not end,
        # suspend or resume the owner's task. The owner's own token, or an operator, does.
        raise AccessDenied("a delegated token cannot move its task", reason="delegated_token")
    state = grant_state(claims, svc)
    # A suspended task's token still speaks for its owner here; an ended task's token may
    # repeat the move that ended it (a no-op) after its grant was cleaned up.
    unsuspended = dataclasses.replace(state, task_suspended=False)
    if not state.task_completed and not is_live(unsuspended, claims, svc.clock.now()):
        raise InvalidToken("the access token is no longer active")
    caller = TaskCaller(identity=claims["sub"], actor=claims["sub"], jti=claims["jti"])
    return caller, str(claims["task_id"])


def transition(
    task_id: str,
    action: str,
    caller: TaskCaller,
    svc: Services,
    *,
    request_id: str = "",
    client_address: str = "",
) -> dict[str, Any]:
    """Move the task; a repeat is a no-op (200), a move out of a terminal state a Conflict."""
    target = ACTIONS[action]
    now = svc.clock.now()
    broker = svc.config.broker
    event: dict[str, Any] = {
        "ts": now,
        "event": EVENTS[target],
        "outcome": target,  # a change's outcome is the state reached (task.completed: completed)
        "task": task_id,
        "identity": caller.identity,
        "actor": caller.actor,
        "jti": caller.jti,
        "request_id": request_id,
        "client_address": client_address,
    }
    result = svc.store.transition_task(
        task_id,
        target=target,
        identity_id=caller.identity,
        audit=event,
        now=int(now),
        tombstone_seconds=broker.task_tombstone_seconds,
        suspension_seconds=broker.task_retention_seconds,
        # A suspend or resume entry is kept while a token issued before it may be live.
        feed_expiry=int(now) + broker.max_token_ttl_seconds + broker.clock_skew_seconds,
        skew_seconds=broker.clock_skew_seconds,
    )
    if result.outcome == "foreign":
        event.update(outcome="denied", reason="task_foreign")
        svc.audit.record(event)
        if caller.identity is not None:
            # A token of another identity in the owner's task: reaching beyond its grant.
            note_denial(svc, caller.identity, "task_foreign", request_id)
        raise AccessDenied("the task belongs to another identity", reason="task_foreign")
    if result.outcome == "unknown":
        raise NotFound("no such task (or it ended long ago)", reason="task_unknown")
    if result.outcome == "illegal":
        event.update(outcome="denied", reason="task_state_conflict", state=result.before)
        svc.audit.record(event)
        raise Conflict(
            f"the task is {result.before}: it cannot be made {target}",
            reason="task_state_conflict",
        )
    changed = result.outcome == "changed"
    event.update(outcome=target if changed else "unchanged", state=result.before)
    svc.audit.record(event, stored=True)  # a change is in the stream already; a repeat is not
    if changed and target in TERMINAL:  # a repeat queues nothing; the sweeper re-enqueues
        schedule_cleanup(task_id, svc)
    return {"task_id": task_id, "state": target, "previous": result.before, "changed": changed}


def schedule_cleanup(task_id: str, svc: Services) -> None:
    try:
        svc.jobs.schedule_task_cleanup(task_id)
    except Exception as err:  # the tombstone already holds; the sweeper re-enqueues the clean-up
        log.warning(
            "could not enqueue task clean-up: %s", type(err).__name__, extra={"task": task_id}
        )


def show(task_id: str, caller: TaskCaller, svc: Services) -> dict[str, Any]:
    """GET /tasks/{id}: state, owner, deadline, labels, live grants (never a token)."""
    record: TaskRecord | None = svc.store.task_record(
        task_id, now=int(svc.clock.now()), limit=GRANTS_SHOWN
    )
    if record is None:
        raise NotFound("no such task (or it ended long ago)", reason="task_unknown")
    if caller.identity is not None and record.owner != caller.identity:
        raise AccessDenied("the task belongs to another identity", reason="task_foreign")
    return record.view()
