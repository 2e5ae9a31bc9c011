"""/healthz: the process is up. /readyz: this process can serve (docs/observability.md):
Redis answers, a signing key is loaded, its last configuration reload was not refused
(ERRAND_READY_REQUIRES_RELOAD_OK) and a worker has reported in recently
(ERRAND_READY_WORKER_MAX_AGE_SECONDS). /metrics: Prometheus exposition."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from broker.domain.ports import StoreUnavailable
from broker.http.process import runtime
from broker.http.responses import json_response
from broker.metrics import render

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition; labels carry no tasks, principals or secrets."""
    body, content_type = render(current_app.extensions["errand.gauges"])
    return Response(body, mimetype=None, content_type=content_type)


@bp.get("/readyz")
def readyz() -> Response:
    process = runtime()
    checks = process.settings.observability
    try:
        process.health.ping()
        newest = process.gauges.newest_heartbeat() if checks.ready_worker_max_age_seconds else None
    except StoreUnavailable:  # answered here: readiness reports "down", it is not an error
        return json_response(
            {
                "status": "unavailable",
                "redis": "down",
                # Shaped like every other 503 of the broker, for clients that read `error`.
                "error": "temporarily_unavailable",
                "error_description": "Redis does not answer",
            },
            503,
            {"Retry-After": "2"},
        )
    body: dict[str, Any] = {"redis": "up", "signing_kid": process.keyring.active.kid}
    reasons: list[str] = []
    reload = dict(process.reloader.status) if process.reloader is not None else None
    if reload is not None and not reload.get("ok", True):
        body["config_reload"] = "refused"
        if checks.ready_requires_reload_ok:
            # Not the error itself: /readyz is unauthenticated; the admin API shows it.
            reasons.append(
                "the last configuration reload was refused (GET /admin/identities/reload)"
            )
    if checks.ready_worker_max_age_seconds:
        age = None if newest is None else max(process.clock.now() - newest, 0.0)
        body["worker_heartbeat_age_seconds"] = None if age is None else round(age, 1)
        if age is None or age > checks.ready_worker_max_age_seconds:
            reasons.append(
                f"no worker has reported in for {checks.ready_worker_max_age_seconds} s"
                if age is not None
                else "no worker has reported in"
            )
    if reasons:
        body.update(
            status="unavailable",
            reasons=reasons,
            error="temporarily_unavailable",
            error_description="; ".join(reasons),
        )
        return json_response(body, 503, {"Retry-After": "5"})
    return json_response({"status": "ready", **body})
