"""Prometheus metrics. Label values come from fixed sets in code (endpoints, event names,
outcome and reason codes), never from tasks, runs, principals or operator text.

Under gunicorn the metrics live in PROMETHEUS_MULTIPROC_DIR (set by config/gunicorn.conf.py
before any worker starts), and /metrics aggregates every worker's files at scrape time."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

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

# Reason codes only for decisions on tokens; operator-written reasons are free text.
_REASON_EVENTS = ("token.exchange", "token.request")


def count_audit_event(event: dict[str, object]) -> None:
    name = str(event.get("event", "unknown"))
    reason = str(event.get("reason") or "") if name in _REASON_EVENTS else ""
    AUDIT_EVENTS.labels(name, str(event.get("outcome") or ""), reason[:64]).inc()
    if name == "identity.flagged":  # the domain flags through audit; it imports no metrics
        IDENTITY_FLAGGED.inc()


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
