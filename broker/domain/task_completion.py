"""Completing a task: a live token of the task's owner ends every token of the task at once;
a job then removes the task's grants."""

from __future__ import annotations

import logging
from typing import Any

from broker.domain.access import read_our_token
from broker.domain.denials import note_denial
from broker.domain.introspection import grant_state, is_live
from broker.domain.ports import Services, WriteRefused
from broker.domain.token_revocation import revoke_grant
from broker.errors import AccessDenied, InvalidToken

log = logging.getLogger(__name__)


def complete_task(
    token: str, svc: Services, *, request_id: str = "", client_address: str = ""
) -> dict[str, Any]:
    """Any live token of a task's owner may declare the task complete.

    A tombstone makes every token of the task inactive at once (introspection checks it);
    an RQ job then removes the task's grants. The tombstone outlives every token the task
    could hold, so a racing exchange for the task is refused. The owner is the one the task
    recorded when it opened, checked in the same script: a token of another identity that
    names the task (however it got there) cannot end the owner's tokens."""
    claims = read_our_token(token, svc)
    if claims is None:
        raise InvalidToken("the access token is invalid or expired")
    task_id = claims["task_id"]
    if "act" in claims:
        # A delegation hop acts for the task's owner; it does not end the owner's task
        # (domain/delegation.py). The owner's own token, or an operator, does.
        raise AccessDenied("a delegated token cannot end its task", reason="delegated_token")
    state = grant_state(claims, svc)
    if state.task_completed:
        return {"task_id": task_id, "completed": True}  # idempotent: already complete
    # Only a live token may end its task: a revoked or superseded one must not.
    if not is_live(state, claims, svc.clock.now()):
        raise InvalidToken("the access token is no longer active")
    now = svc.clock.now()
    event: dict[str, Any] = {
        "ts": now,
        "event": "task.completed",
        "outcome": "completed",
        "task": task_id,
        "identity": claims["sub"],
        "jti": claims["jti"],
        "request_id": request_id,
        "client_address": client_address,
    }
    try:
        newly = svc.store.complete_task(
            task_id,
            identity_id=claims["sub"],
            tombstone_seconds=svc.config.broker.task_tombstone_seconds,
            audit=event,
            now=int(now),
            skew_seconds=svc.config.broker.clock_skew_seconds,
        )
    except WriteRefused as refused:
        # A token of another identity in the owner's task: audited, and counted against
        # that identity as reaching beyond what it was given.
        event.update(outcome="denied", reason=refused.reason)
        svc.audit.record(event)
        note_denial(svc, claims["sub"], refused.reason, request_id)
        raise AccessDenied(
            "the task belongs to another identity", reason=refused.reason
        ) from refused
    if newly:
        svc.audit.record(event, stored=True)
    try:
        svc.jobs.schedule_task_cleanup(task_id)
    except Exception as err:  # the tombstone already holds; the sweeper re-enqueues the clean-up
        log.warning(
            "could not enqueue task clean-up: %s", type(err).__name__, extra={"task": task_id}
        )
    return {"task_id": task_id, "completed": True}


def cleanup_task(task_id: str, svc: Services) -> int:
    """Revoke every grant of a completed task. Idempotent: safe to run twice."""
    count = 0
    for jti in svc.store.task_grant_ids(task_id):
        if revoke_grant(jti, svc, reason="task_completed", actor="worker", task_id=task_id):
            count += 1
    svc.store.finish_task_cleanup(task_id)
    return count
