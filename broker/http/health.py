"""/healthz: the process is up. /readyz: Redis answers and a signing key is loaded."""

from __future__ import annotations

from flask import Blueprint, Response

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
    body, content_type = render()
    return Response(body, mimetype=None, content_type=content_type)


@bp.get("/readyz")
def readyz() -> Response:
    process = runtime()
    try:
        process.health.ping()
    except StoreUnavailable:  # answered here: readiness reports "down", it is not an error
        return json_response({"status": "unavailable", "redis": "down"}, 503, {"Retry-After": "2"})
    return json_response(
        {"status": "ready", "redis": "up", "signing_kid": process.keyring.active.kid}
    )
