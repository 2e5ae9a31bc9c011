"""Enqueue worker jobs by dotted path, so broker/ never imports workers/."""

from __future__ import annotations

import hashlib

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

QUEUE_NAME = "errand"
# The periodic expiry sweep, by name: the worker logs its routine runs at DEBUG.
SWEEP_JOB_ID = "sweep-expired"
SWEEP_FUNCTION = "workers.expiry.sweep_expired"
RETRY = Retry(max=5, interval=[1, 2, 5, 10, 30])


def task_job_id(task_id: str) -> str:
    # RQ job ids allow [A-Za-z0-9_-] only; task ids may hold '.', ':', '@' and '+'.
    return "cleanup-task-" + hashlib.sha256(task_id.encode()).hexdigest()[:32]


def contract_job_id(audience: str, version: str) -> str:
    # One job per (audience, version): reloads in many web processes enqueue it once.
    digest = hashlib.sha256(f"{audience}\0{version}".encode()).hexdigest()[:32]
    return f"contract-{digest}"


class RqScheduler:
    """JobScheduler on RQ. RQ needs its own connection without decode_responses."""

    def __init__(self, connection: redis.Redis) -> None:
        self.queue = Queue(QUEUE_NAME, connection=connection)

    def job_keys(self) -> dict[str, tuple[str, str]]:
        """RQ's own keys of the queue and its registries, by job state: what /metrics counts
        (broker/store/gauges.py). Each is (redis type, key)."""
        queue = self.queue
        return {
            "queued": ("list", queue.key),
            "scheduled": ("zset", queue.scheduled_job_registry.key),
            "started": ("zset", queue.started_job_registry.key),
            "failed": ("zset", queue.failed_job_registry.key),
        }

    def _pending(self, job_id: str) -> bool:
        """RQ pushes a fixed job id onto the queue again; skip while one is still pending."""
        job = Job.fetch(job_id, connection=self.queue.connection) if self._exists(job_id) else None
        return job is not None and job.get_status(refresh=False) in (
            JobStatus.QUEUED,
            JobStatus.SCHEDULED,
            JobStatus.DEFERRED,
        )

    def _exists(self, job_id: str) -> bool:
        return bool(self.queue.connection.exists(Job.key_for(job_id)))

    def schedule_task_cleanup(self, task_id: str) -> None:
        # A fixed job id per task: a second completion does not queue a second clean-up.
        if self._pending(task_job_id(task_id)):
            return
        self.queue.enqueue(
            "workers.tasks.cleanup_task",
            task_id,
            job_id=task_job_id(task_id),
            retry=RETRY,
            result_ttl=300,
            failure_ttl=86400,
        )

    def schedule_fanout(self, epoch: int) -> None:
        self.queue.enqueue(
            "workers.revocation.fanout_epoch",
            epoch,
            job_id=f"fanout-epoch-{int(epoch)}",
            retry=RETRY,
            job_timeout=1800,
            result_ttl=3600,
            failure_ttl=86400,
        )

    def schedule_sweep(self) -> None:
        self.queue.enqueue(
            SWEEP_FUNCTION,
            job_id=SWEEP_JOB_ID,
            retry=Retry(max=2, interval=[1, 5]),
            result_ttl=60,
            failure_ttl=3600,
        )

    def schedule_approval_notice(self, approval_id: str) -> None:
        """Announce a new approval to the webhook (workers/approval_webhook.py): one attempt,
        audited either way; people can always list the pending approvals."""
        self.queue.enqueue(
            "workers.approval_webhook.notify_approvers",
            approval_id,
            job_id=f"approval-notice-{approval_id}",
            job_timeout=60,
            result_ttl=3600,
            failure_ttl=86400,
        )

    def schedule_contract_revocation(self, audience: str, version: str) -> None:
        """Revoke the grants bound to older contract versions of `audience`
        (workers/contracts.py)."""
        job_id = contract_job_id(audience, version)
        if self._pending(job_id):
            return
        self.queue.enqueue(
            "workers.contracts.revoke_outdated_contracts",
            audience,
            version,
            job_id=job_id,
            retry=RETRY,
            job_timeout=1800,
            result_ttl=3600,
            failure_ttl=86400,
        )
