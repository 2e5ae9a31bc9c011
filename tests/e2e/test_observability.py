"""Observability of a real stack (gunicorn + `python -m workers`, real Redis): the worker's
jobs are counted (its own /metrics, ERRAND_WORKER_METRICS_BIND) so that the counters of the
web and the worker add up to the audit stream; the scrape-time gauges; the exchange's spans
reach an OTLP/HTTP collector; every worker log line is JSON; /readyz fails once no worker
reports in, and a stopped worker leaves no metrics folder behind."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from broker.store import keys
from tests.support.clocks import wait_until
from tests.support.otlp import OtlpCollector
from tests.support.redis import RedisDbs
from tests.support.stack import TunedStack, free_port, issue

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TASKS = 3
GRANTS_PER_TASK = 3  # N = 9 revocations by the worker, as many as the report that started this


def _samples(session: requests.Session, url: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    text = session.get(url, timeout=10).text
    out: dict[tuple[str, tuple[Any, ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _audit_count(samples: dict[tuple[str, tuple[Any, ...]], float], event: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "errand_audit_events_total" and ("event", event) in labels
    )


def _stream_count(peek: redis.Redis, event: str) -> int:
    return sum(
        json.loads(fields["e"]).get("event") == event
        for _id, fields in peek.xrange(keys.AUDIT_STREAM)
    )


def test_worker_counts_gauges_spans_and_readiness(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: Any, http
) -> None:
    url = redis_dbs.url("observability")
    workdir = tmp_path_factory.mktemp("observability")
    tmp = workdir / "tmp"
    tmp.mkdir()
    worker_port = free_port()
    with OtlpCollector() as collector:
        stack = TunedStack(
            workdir,
            url,
            dev_issuer.issuer,
            extra_env={
                "ERRAND_WORKER_METRICS_BIND": f"127.0.0.1:{worker_port}",
                "ERRAND_WORKER_HEARTBEAT_SECONDS": "1",
                "ERRAND_READY_WORKER_MAX_AGE_SECONDS": "3",
                "ERRAND_METRICS_CACHE_SECONDS": "0",
                "ERRAND_OTLP_ENDPOINT": collector.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "TMPDIR": str(tmp),  # where each process makes its metrics folder
            },
        )
        peek = redis.Redis.from_url(url, decode_responses=True)
        stack.start()
        try:
            _story(stack, dev_issuer, collector, peek, http, worker_port, tmp)
        finally:
            stack.stop()
            peek.close()
            redis_dbs.flush("observability")
    # Stopped (SIGTERM): neither the gunicorn master nor the worker left its folder behind.
    assert not list(tmp.glob("errand-*metrics-*")), list(tmp.iterdir())


def _story(
    stack: TunedStack,
    dev_issuer: Any,
    collector: OtlpCollector,
    peek: redis.Redis,
    http: requests.Session,
    worker_port: int,
    tmp: Path,
) -> None:
    ready = http.get(stack.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["worker_heartbeat_age_seconds"] < 3

    # N revocations, all by the worker: each completed task's clean-up job revokes its grants.
    run = secrets.token_hex(4)
    tokens = {
        f"obs-{run}-{t}": [
            issue(stack, dev_issuer, http, task_id=f"obs-{run}-{t}")["access_token"]
            for _ in range(GRANTS_PER_TASK)
        ]
        for t in range(TASKS)
    }
    web = stack.url + "/metrics"
    before = _samples(http, web)
    assert before[("errand_tasks", (("state", "open"),))] == TASKS
    assert before[("errand_grants_live", ())] == TASKS * GRANTS_PER_TASK
    assert before[("errand_redis_up", ())] == 1
    for task_tokens in tokens.values():
        done = http.post(
            stack.url + "/tasks/complete",
            headers={"Authorization": f"Bearer {task_tokens[0]}"},
            timeout=10,
        )
        assert done.status_code == 200, done.text

    def cleaned_up() -> bool:
        samples = _samples(http, web)
        return (
            samples[("errand_tasks", (("state", "cleanup_pending"),))] == 0
            and samples[("errand_jobs", (("state", "queued"),))] == 0
            and samples[("errand_jobs", (("state", "started"),))] == 0
        )

    assert wait_until(cleaned_up, timeout=20), stack.logs()
    worker = f"http://127.0.0.1:{worker_port}/metrics"
    web_samples, worker_samples = _samples(http, web), _samples(http, worker)
    revoked = _stream_count(peek, "grant.revoked")
    assert revoked == TASKS * GRANTS_PER_TASK
    # What the web counted plus what the worker counted is what the audit stream holds.
    assert _audit_count(web_samples, "grant.revoked") == 0  # the web revoked nothing itself
    assert _audit_count(worker_samples, "grant.revoked") == revoked
    for event in ("task.completed", "token.exchange"):
        counted = _audit_count(web_samples, event) + _audit_count(worker_samples, event)
        assert counted == _stream_count(peek, event), event
    assert web_samples[("errand_grants_live", ())] == 0
    assert web_samples[("errand_tasks", (("state", "open"),))] == 0
    assert web_samples[("errand_tasks", (("state", "completed"),))] == TASKS
    assert web_samples[("errand_grants_live_after_task_end", ())] == 0
    assert web_samples[("errand_jobs", (("state", "failed"),))] == 0
    # Nine jobs' worth of work horses wrote one set of files, not one per job.
    worker_dirs = list(tmp.glob("errand-worker-metrics-*"))
    assert len(worker_dirs) == 1
    writers = {p.stem.rsplit("_", 1)[1] for p in worker_dirs[0].glob("*.db")}
    horses = {w for w in writers if w.startswith("horse")}
    assert len(horses) == 1 and len(writers) <= 3, writers  # the worker, its horses, scheduler

    # The exchange's steps reached the collector, under the request's span.
    steps = {
        "exchange.verify_subject",
        "exchange.match_identity",
        "exchange.preflight",
        "exchange.policy",
        "exchange.mint",
        "exchange.store",
        "exchange.audit",
    }
    assert wait_until(lambda: steps <= collector.names(), timeout=10), collector.names()
    assert "POST token.token" in collector.names()
    assert set(collector.paths) == {"/v1/traces"}
    assert {span["service"] for span in collector.spans} == {"errand"}

    # Every line the worker wrote, the jobs' included, is one JSON object.
    lines = (stack.workdir / "worker.log").read_text().splitlines()
    assert any("task cleaned up" in line for line in lines)
    assert all(line.startswith("{") for line in lines if line.strip()), lines

    # The worker stops (SIGTERM: RQ's warm shutdown): /readyz fails within the threshold.
    stack.procs["worker"].terminate()
    stack.procs["worker"].wait(15)

    def unready() -> bool:
        resp = http.get(stack.url + "/readyz", timeout=10)
        return resp.status_code == 503 and "no worker" in " ".join(resp.json()["reasons"])

    assert wait_until(unready, timeout=10)
    assert http.get(stack.url + "/healthz", timeout=10).status_code == 200  # liveness unchanged
