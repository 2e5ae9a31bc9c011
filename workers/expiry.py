"""sweep_expired(): the clean-up safety net.

Grant keys expire by Redis TTL whatever the workers do; this job removes expired entries
from the task, identity, owner and expiry indexes (and records an expiry audit event), so
Redis memory tracks live grants only. It also re-enqueues task clean-ups that a dead worker
left behind."""

from __future__ import annotations

import logging

from workers.context import services

log = logging.getLogger(__name__)

BATCH = 1000
MAX_BATCHES = 200
COMPLETION_GRACE_SECONDS = 30


def sweep_expired() -> int:
    svc = services()
    now = svc.clock.now()
    total = 0
    for _ in range(MAX_BATCHES):
        removed = svc.store.sweep_expired(now=int(now), batch=BATCH)
        total += removed
        if removed < BATCH:
            break
    for task_id in svc.store.stale_completions(now - COMPLETION_GRACE_SECONDS):
        svc.jobs.schedule_task_cleanup(task_id)
    if total:
        log.info("expired grants swept", extra={"count": total})
    return total
