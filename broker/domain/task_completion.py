"""Completing a task: a live token of the task's owner ends every token of the task at once;
a job then removes the task's grants."""

from __future__ import annotations

import contextlib
from typing import Any

from broker.domain.ports import Services
from broker.domain.task_lifecycle import owner_from_token, transition
from broker.domain.task_proof import TaskProofs, begin_proof, finish_proof
from broker.domain.token_presentation import PresentedToken
from broker.domain.token_revocation import revoke_grant
from broker.errors import Conflict


def complete_task(
    token: str | PresentedToken, svc: Services, *, request_id: str = "", client_address: str = ""
) -> dict[str, Any]:
    """POST /tasks/complete: a token of a task's owner declares its own task complete.

    A tombstone makes every token of the task inactive at once (introspection checks it);
    an RQ job then removes the task's grants. The tombstone outlives every token the task
    could hold, so a racing exchange for the task is refused. The owner is the one the task
    recorded when it opened, checked in the same script: a token of another identity that
    names the task (however it got there) cannot end the owner's tokens.

    The caller learns only that the task has ended: a task that already ended in another
    way (failed, cancelled, past its deadline) answers the same, as it always has."""
    caller, task_id = owner_from_token(token, None, svc)
    # Only an ended task refuses completion (Conflict): it has ended, which is what was asked.
    with contextlib.suppress(Conflict):
        transition(
            task_id,
            "complete",
            caller,
            svc,
            request_id=request_id,
            client_address=client_address,
        )
    return {"task_id": task_id, "completed": True}


def cleanup_task(task_id: str, svc: Services, proofs: TaskProofs | None = None) -> int:
    """Revoke every grant of an ended task (every grant indexed under it). Idempotent.

    With `proofs`, the task's proof that all its tokens are dead is signed and stored once
    none is left (domain/task_proof.py); it is written before the clean-up is marked done,
    so a job that fails before the proof is re-enqueued by the sweeper."""
    state = svc.store.task_terminal_state(task_id) or "completed"
    jtis = svc.store.task_grant_ids(task_id)
    end = begin_proof(task_id, jtis, proofs) if proofs is not None else None
    count = 0
    for jti in jtis:
        if revoke_grant(jti, svc, reason=f"task_{state}", actor="worker", task_id=task_id):
            count += 1
    if proofs is not None and end is not None:
        claims = finish_proof(
            task_id,
            end,
            proofs,
            keyring=svc.keyring,
            issuer=svc.config.broker.issuer,
            now=int(svc.clock.now()),
            epoch=svc.store.current_epoch(),
            skew_seconds=svc.config.broker.clock_skew_seconds,
        )
        if claims is not None:
            svc.audit.record(
                {
                    "ts": svc.clock.now(),
                    "event": "task.proved",
                    "outcome": "proved",
                    "task": task_id,
                    "state": end.state,
                    "actor": "worker",
                    "grant_count": claims["grant_count"],
                    "proof_id": claims["jti"],
                }
            )
    svc.store.finish_task_cleanup(task_id)
    return count
