"""/metrics's scrape-time gauges, /readyz's checks, and the exchange's spans, on fakeredis
and the FixedClock (tests/e2e/test_observability.py runs the same against real processes)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from broker.tracing_otel import OtelTracer


def _gauges(client: Any) -> dict[tuple[str, tuple[Any, ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _task(state: str) -> tuple[str, tuple[Any, ...]]:
    return ("errand_tasks", (("state", state),))


def test_gauges_follow_grants_and_tasks(client, issued, svc, clock) -> None:
    first = issued(task_id="obs-a")["access_token"]
    issued(task_id="obs-a")
    issued(task_id="obs-b")
    seen = _gauges(client)
    assert seen[("errand_redis_up", ())] == 1
    assert seen[("errand_grants_live", ())] == 3
    assert seen[_task("open")] == 2
    assert seen[_task("completed")] == 0

    done = client.post("/tasks/complete", headers={"Authorization": f"Bearer {first}"})
    assert done.status_code == 200, done.get_json()
    clock.advance(svc.settings.observability.metrics_cache_seconds)  # past the cache
    seen = _gauges(client)
    assert (seen[_task("open")], seen[_task("completed")], seen[_task("cleanup_pending")]) == (
        1,
        1,
        1,
    )
    assert seen[("errand_jobs", (("state", "queued"),))] == 1  # the task's clean-up job
    # Not yet: the clean-up has the reconcile period to run.
    assert seen[("errand_grants_live_after_task_end", ())] == 0
    clock.advance(svc.settings.reconcile_after_seconds + 1)  # no worker ran it
    assert _gauges(client)[("errand_grants_live_after_task_end", ())] == 2


def test_gauges_are_cached_between_scrapes(client, issued, svc, clock) -> None:
    issued(task_id="obs-cache")
    assert _gauges(client)[("errand_grants_live", ())] == 1
    issued(task_id="obs-cache")
    assert _gauges(client)[("errand_grants_live", ())] == 1  # the cached reading
    clock.advance(svc.settings.observability.metrics_cache_seconds)
    assert _gauges(client)[("errand_grants_live", ())] == 2


def test_redis_down_is_a_reading_not_an_error(client, fake_server) -> None:
    fake_server.connected = False
    seen = _gauges(client)
    assert seen[("errand_redis_up", ())] == 0
    assert ("errand_grants_live", ()) not in seen


def test_readyz_needs_a_recent_worker_report(client, svc, clock) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["reasons"] == ["no worker has reported in"]
    svc.gauges.heartbeat("worker-1", now=clock.now())
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["worker_heartbeat_age_seconds"] == 0
    clock.advance(svc.settings.observability.ready_worker_max_age_seconds + 1)
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert "no worker has reported in for 60 s" in resp.get_json()["reasons"]
    assert client.get("/healthz").status_code == 200  # liveness does not care


class _RefusedReload:
    status = {"ok": False, "error": "identities[3].match: secret detail"}

    def maybe_reload(self) -> None:
        pass


def test_readyz_fails_while_the_last_reload_was_refused(client, svc, clock) -> None:
    svc.gauges.heartbeat("worker-1", now=clock.now())
    svc.reloader = _RefusedReload()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["config_reload"] == "refused"
    assert "secret detail" not in resp.get_data(as_text=True)  # the admin API shows it


STEPS = [
    "exchange.verify_subject",
    "exchange.match_identity",
    "exchange.preflight",
    "exchange.policy",
    "exchange.mint",
    "exchange.store",
    "exchange.audit",
]


@pytest.fixture
def spans(svc) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    svc.tracer = OtelTracer.with_exporter(exporter)
    return exporter


def _names(spans: tuple[ReadableSpan, ...]) -> list[str]:
    return [s.name for s in spans]


def test_an_exchange_is_one_span_per_step(issued, spans) -> None:
    issued(task_id="obs-trace")
    assert _names(spans.get_finished_spans()) == STEPS
    assert all(s.status.status_code != StatusCode.ERROR for s in spans.get_finished_spans())


def test_a_refused_step_is_marked_by_its_error_type_only(exchange, spans) -> None:
    resp = exchange(scope="deploy:everything")
    assert resp.status_code == 400
    finished = spans.get_finished_spans()
    assert _names(finished)[-1] == "exchange.audit"
    failed = [s for s in finished if s.status.status_code == StatusCode.ERROR]
    assert [s.name for s in failed] == ["exchange.policy"]
    assert failed[0].attributes == {"errand.error": "InvalidScope"}
    assert "everything" not in (failed[0].status.description or "")
