"""sweep_expired(): the clean-up safety net.

Grant keys expire by Redis TTL whatever the workers do; this job removes expired entries
from the task, identity and expiry indexes (and records an expiry audit event), so Redis
memory tracks live grants only. It also re-enqueues task and revoke-all clean-ups that a dead
worker left behind, trims the revocation feed and starts a scheduled key rotation."""

from __future__ import annotations

import logging

from broker.audit_signing import seal_if_due
from workers.context import services
from workers.keys import rotate_if_due

log = logging.getLogger(__name__)

BATCH = 1000
MAX_BATCHES = 200


def sweep_expired() -> int:
    svc = services()
    now = svc.clock.now()
    grace = svc.settings.reconcile_after_seconds
    total = 0
    for _ in range(MAX_BATCHES):
        removed = svc.store.sweep_expired(now=int(now), batch=BATCH)
        total += removed
        if removed < BATCH:
            break
    svc.gauges.prune(now=now)  # the task-state indexes /metrics counts
    for task_id in svc.store.stale_completions(now - grace):
        svc.jobs.schedule_task_cleanup(task_id)
    # A revoke-all clean-up that no worker has advanced for a while is enqueued again.
    for epoch in svc.revocations.pending_fanouts(now - grace):
        progress = svc.revocations.fanout_progress(epoch)
        if now - float(progress.get("updated_at", 0)) > grace:
            svc.jobs.schedule_fanout(epoch)
    # Feed entries older than any token they could cover are dropped.
    broker = svc.config.broker
    svc.revocations.trim_feed(
        broker.task_tombstone_seconds + broker.clock_skew_seconds + 60, int(now)
    )
    try:
        seal_if_due(svc)  # the audit chain's checkpoints (docs/audit.md)
    except Exception as err:  # sealing is retried on the next sweep
        log.warning("audit sealing failed: %s", type(err).__name__)
    try:
        rotate_if_due()
    except Exception as err:  # rotation is retried on the next sweep
        log.warning("scheduled key rotation failed: %s", type(err).__name__)
    if total:
        # Routine: each expiry is also an audit event.
        log.debug("expired grants swept", extra={"count": total})
    return total
