"""RQ jobs on a real Redis, run by SimpleWorker(burst=True): task clean-up and the sweep.

docs/security-model.md: workers clean up, they are not the safety. Jobs take ids, reload state, are
idempotent, carry fixed job ids; the sweeper re-enqueues what a dead worker left."""

from __future__ import annotations

import time

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from broker.domain.audit_hmac import jti_hmac
from broker.domain.introspection import introspect
from broker.domain.task_completion import complete_task
from broker.jobs import QUEUE_NAME, task_job_id
from broker.store import keys
from broker.store.grant_record import expiry_member
from tests.support.domain import exchange, run_jobs
from tests.support.redis import audit_events

pytestmark = pytest.mark.integration


def _wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def test_completion_job_removes_every_grant_of_the_task_and_is_idempotent(
    worker_env, svc, raw, subject
):
    mine = [exchange(svc, subject(), task_id="job-task") for _ in range(3)]
    other = exchange(svc, subject(), task_id="other-task")
    assert raw.zcard(keys.task_index("job-task")) == 3

    complete_task(mine[1].access_token, svc, request_id="rq-1")

    # The clean-up job is queued under a fixed id, carrying only the task id.
    job = Job.fetch(task_job_id("job-task"), connection=svc.rq_redis)
    assert job.func_name == "workers.tasks.cleanup_task"
    assert job.args == ("job-task",)
    assert raw.zscore(keys.COMPLETING, "job-task") is not None
    # Before any worker runs, the tombstone already makes all three inactive.
    assert all(introspect(t.access_token, svc) == {"active": False} for t in mine)

    run_jobs(svc)

    job.refresh()
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == 3
    for t in mine:
        assert raw.exists(keys.grant(t.grant.jti)) == 0
        assert raw.zscore(keys.identity_index("acme-deploy"), t.grant.jti) is None
        assert raw.zscore(keys.EXPIRY_INDEX, expiry_member(t.grant)) is None
    assert raw.exists(keys.task_index("job-task")) == 0
    assert raw.zscore(keys.COMPLETING, "job-task") is None
    revoked = [
        e
        for e in audit_events(raw)
        if e["event"] == "grant.revoked" and e.get("task") == "job-task"
    ]
    assert sorted(e["jti_hmac"] for e in revoked) == sorted(jti_hmac(t.grant.jti) for t in mine)
    assert {e["reason"] for e in revoked} == {"task_completed"}
    assert {e["actor"] for e in revoked} == {"worker"}

    # The other task is untouched.
    assert introspect(other.access_token, svc)["active"] is True
    assert raw.zscore(keys.task_index("other-task"), other.grant.jti) == other.grant.exp

    # Completing again is idempotent: it answers "completed" and queues nothing new.
    assert complete_task(mine[0].access_token, svc) == {"task_id": "job-task", "completed": True}
    snapshot_before = {k: raw.type(k) for k in raw.keys("errand:*") if k != keys.AUDIT_STREAM}
    run_jobs(svc)
    job = Job.fetch(task_job_id("job-task"), connection=svc.rq_redis)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value(refresh=True) == 3  # the first run's result: no second run
    assert {
        k: raw.type(k) for k in raw.keys("errand:*") if k != keys.AUDIT_STREAM
    } == snapshot_before
    assert introspect(other.access_token, svc)["active"] is True

    # A second clean-up run (a retry, the reconciler) finds nothing left and changes nothing.
    svc.jobs.schedule_task_cleanup("job-task")
    run_jobs(svc)
    job = Job.fetch(task_job_id("job-task"), connection=svc.rq_redis)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value(refresh=True) == 0
    assert {
        k: raw.type(k) for k in raw.keys("errand:*") if k != keys.AUDIT_STREAM
    } == snapshot_before


def test_cleanup_task_called_directly_is_idempotent(worker_env, svc, raw, subject):
    import workers.tasks

    issued = [exchange(svc, subject(), task_id="direct-task") for _ in range(2)]
    svc.store.complete_task(
        "direct-task",
        identity_id="acme-deploy",
        tombstone_seconds=3600,
        audit={"event": "task.completed"},
        now=int(time.time()),
    )
    assert workers.tasks.cleanup_task("direct-task") == 2
    assert workers.tasks.cleanup_task("direct-task") == 0
    assert all(raw.exists(keys.grant(t.grant.jti)) == 0 for t in issued)


def test_sweep_removes_expired_grants_from_every_index(worker_env, svc, raw, subject):
    short = [exchange(svc, subject(), task_id="sweep-task", requested_lifetime=1) for _ in range(3)]
    live = exchange(svc, subject(), task_id="live-task", requested_lifetime=300)
    _wait_until(max(t.grant.exp for t in short) + 0.3)

    # Redis TTL has already removed the grant hashes; the indexes still name them.
    for t in short:
        assert raw.exists(keys.grant(t.grant.jti)) == 0
    assert raw.zcard(keys.EXPIRY_INDEX) == 4
    assert raw.zscore(keys.identity_index("acme-deploy"), short[0].grant.jti) is not None

    svc.jobs.schedule_sweep()  # type: ignore[attr-defined]
    run_jobs(svc)

    assert raw.zrange(keys.EXPIRY_INDEX, 0, -1) == [expiry_member(live.grant)]
    assert raw.zrangebyscore(keys.EXPIRY_INDEX, "-inf", time.time()) == []
    assert raw.zrange(keys.identity_index("acme-deploy"), 0, -1) == [live.grant.jti]
    assert raw.zcard(keys.task_index("sweep-task")) == 0
    expired = [e for e in audit_events(raw) if e["event"] == "grant.expired"]
    assert sorted(e["jti_hmac"] for e in expired) == sorted(jti_hmac(t.grant.jti) for t in short)
    assert all(e["outcome"] == "expired" and e["task"] == "sweep-task" for e in expired)
    assert all(e["identity"] == "acme-deploy" for e in expired)
    assert introspect(live.access_token, svc)["active"] is True

    # Sweeping again finds nothing and records nothing.
    audit_len = raw.xlen(keys.AUDIT_STREAM)
    import workers.expiry

    assert workers.expiry.sweep_expired() == 0
    assert raw.xlen(keys.AUDIT_STREAM) == audit_len


def test_sweep_handles_more_than_one_batch(worker_env, svc, raw, monkeypatch):
    """Members beyond the first batch are swept in the same run."""
    import workers.expiry

    monkeypatch.setattr(workers.expiry, "BATCH", 7)
    past = int(time.time()) - 5
    members = {f"jti{i} t{i % 3} acme-deploy": past for i in range(20)}
    raw.zadd(keys.EXPIRY_INDEX, members)
    raw.zadd(keys.identity_index("acme-deploy"), {f"jti{i}": past for i in range(20)})
    assert workers.expiry.sweep_expired() == 20
    assert raw.zcard(keys.EXPIRY_INDEX) == 0
    assert raw.zcard(keys.identity_index("acme-deploy")) == 0


def test_sweep_reenqueues_a_completion_a_dead_worker_left(worker_env, svc, raw, subject):
    issued = [exchange(svc, subject(), task_id="orphan-task") for _ in range(2)]
    # A completion recorded long ago whose clean-up job was lost (worker died, queue flushed).
    svc.store.complete_task(
        "orphan-task",
        identity_id="acme-deploy",
        tombstone_seconds=3600,
        audit={"event": "task.completed", "task": "orphan-task"},
        now=int(time.time()) - 120,
    )
    assert Queue(QUEUE_NAME, connection=svc.rq_redis).count == 0

    svc.jobs.schedule_sweep()  # type: ignore[attr-defined]
    run_jobs(svc)  # the sweep enqueues the clean-up; the burst worker runs it too

    assert all(raw.exists(keys.grant(t.grant.jti)) == 0 for t in issued)
    assert raw.zscore(keys.COMPLETING, "orphan-task") is None
    job = Job.fetch(task_job_id("orphan-task"), connection=svc.rq_redis)
    assert job.return_value() == 2


def test_repeated_completion_queues_one_cleanup(worker_env, svc, raw, subject):
    issued = exchange(svc, subject(), task_id="dup-task")
    for _ in range(20):
        complete_task(issued.access_token, svc)
    queue = Queue(QUEUE_NAME, connection=svc.rq_redis)
    assert queue.count == 1
    # The scheduler itself keeps one pending clean-up per task (the reconciler calls it too).
    for _ in range(20):
        svc.jobs.schedule_task_cleanup("dup-task")
    assert queue.count == 1
