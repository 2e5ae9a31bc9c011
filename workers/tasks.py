"""cleanup_task(task_id): revoke every grant of an ended task, then sign its proof."""

from __future__ import annotations

import logging

from broker.domain.task_completion import cleanup_task as _cleanup
from broker.store.audit_proofs import RedisTaskProofs
from workers.context import services

log = logging.getLogger(__name__)


def cleanup_task(task_id: str) -> int:
    # Introspection already treats the task as dead (its tombstone); this removes the grants.
    svc = services()
    # Once every grant is revoked, the task's signed proof that its tokens are dead.
    count = _cleanup(task_id, svc, RedisTaskProofs(svc.redis))
    log.info("task cleaned up", extra={"task": task_id, "revoked": count})
    return count
