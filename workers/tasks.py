"""cleanup_task(task_id): revoke every grant of a completed task."""

from __future__ import annotations

import logging

from broker.domain.task_completion import cleanup_task as _cleanup
from workers.context import services

log = logging.getLogger(__name__)


def cleanup_task(task_id: str) -> int:
    # Introspection already treats the task as dead (its tombstone); this removes the grants.
    count = _cleanup(task_id, services())
    log.info("task cleaned up", extra={"task": task_id, "revoked": count})
    return count
