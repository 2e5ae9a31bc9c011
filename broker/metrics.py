"""Prometheus metrics. Label values come from fixed sets in code (endpoints, event names,
outcome and reason codes), never from tasks, runs, principals or operator text.

Under gunicorn the metrics live in PROMETHEUS_MULTIPROC_DIR (set by config/gunicorn.conf.py
before any worker starts), and /metrics aggregates every worker's files at scrape time.

`python -m workers` uses the same mode with a directory of its own (workers/metrics_dir.py):
RQ runs each job in a forked work horse, and a plain in-process counter dies with it. Each
horse would write files named by its own pid, one set per job, for ever; instead every
horse of one worker writes the same file (`*_horse<worker pid>.db`): a worker runs one horse
at a time, so the file has one writer at a time and carries the counts from job to job. The
worker serves the aggregate on ERRAND_WORKER_METRICS_BIND (workers/metrics_server.py).
docs/observability.md lists every metric and which process writes it."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.registry import Collector

_horse_of: int | None = None  # in an RQ work horse: the pid of the worker that forked it


def _process_identifier() -> str:
    """Names this process's metric files: its pid, or for a work horse its worker's."""
    return f"horse{_horse_of}" if _horse_of is not None else str(os.getpid())


def enter_work_horse() -> None:
    """Called first thing in a freshly forked RQ work horse (workers/worker.py)."""
    global _horse_of
    _horse_of = os.getppid()


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Before any metric below is created: each takes its value class from here.
    values.ValueClass = values.MultiProcessValue(_process_identifier)  # type: ignore[no-untyped-call]

HTTP_REQUESTS = Counter(
    "errand_http_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"]
)
HTTP_SECONDS = Histogram(
    "errand_http_request_seconds",
    "HTTP request latency by endpoint",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
AUDIT_EVENTS = Counter(
    "errand_audit_events_total",
    "Audit events by event, outcome and reason code",
    ["event", "outcome", "reason"],
)
IDENTITY_FLAGGED = Counter(
    "errand_identity_flagged_total", "Identities flagged for repeated suspicious denials"
)
AUTH_FAILURES = Counter(
    "errand_auth_failures_total",
    "Failed client and admin authentications (denied) and attempts refused by the "
    "per-address throttle (throttled)",
    ["kind", "outcome"],
)
JWKS_FETCHES = Counter("errand_jwks_fetches_total", "JWKS fetches by issuer id", ["issuer"])
CONFIG_RELOAD_FAILURES = Counter(
    "errand_config_reload_failures_total",
    "Configuration reloads refused (the running configuration was kept)",
)
# Per web process; the scrape shows the lowest of the live processes: 0 if any refused.
CONFIG_LAST_RELOAD_OK = Gauge(
    "errand_config_last_reload_success",
    "1 when the last configuration reload (or the start-up load) applied, 0 when it was refused",
    multiprocess_mode="livemin",
)

# Reason codes only for decisions on tokens; operator-written reasons are free text.
_REASON_EVENTS = ("token.exchange", "token.request")


AUDIT_WRITE_FAILURES = Counter(
    "errand_audit_write_failures_total",
    "Audit entries that could not be written: refused (the action was refused with 503) or "
    "logged (a log-only event kept in the log alone)",
    ["event", "result"],
)


def count_audit_write_failure(event: str, result: str) -> None:
    """`result`: refused | logged. `event` is an event name from code, or `script` for a
    change refused inside a Lua script (broker/store/connection.py)."""
    AUDIT_WRITE_FAILURES.labels(event[:64], result).inc()


def count_audit_event(event: dict[str, object]) -> None:
    name = str(event.get("event", "unknown"))
    reason = str(event.get("reason") or "") if name in _REASON_EVENTS else ""
    AUDIT_EVENTS.labels(name, str(event.get("outcome") or ""), reason[:64]).inc()
    if name == "identity.flagged":  # the domain flags through audit; it imports no metrics
        IDENTITY_FLAGGED.inc()


def render(*collectors: Collector) -> tuple[bytes, str]:
    """The exposition: every process's counters (multiprocess mode) or this process's, then
    `collectors` (the gauges read at scrape time, broker/metrics_gauges.py)."""
    extra = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        extra.register(collector)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(extra)  # type: ignore[no-untyped-call]
        return generate_latest(extra), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + generate_latest(extra), CONTENT_TYPE_LATEST
