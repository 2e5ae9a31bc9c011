"""create_app(): build the process's Runtime into app.extensions and register the blueprints."""

from __future__ import annotations

import hashlib
import time

from flask import Flask, Response, g, request

from broker.audit import configure_audit_logging
from broker.http import (
    admin,
    approvals,
    audit_admin,
    health,
    introspect,
    inventory,
    revocation_feed,
    revoke,
    task_proof,
    tasks,
    token,
    wellknown,
)
from broker.http.console import bp as console_bp
from broker.http.context import request_id
from broker.http.responses import register_error_handlers
from broker.http.tracing import install_request_spans
from broker.logging_json import configure_logging
from broker.metrics import HTTP_REQUESTS, HTTP_SECONDS
from broker.metrics_gauges import ScrapeGauges
from broker.runtime import Runtime
from broker.services import build_services, check_redis_policy
from broker.settings import Settings, load_settings

MAX_BODY_BYTES = 64 * 1024


def read_admin_token_hash(settings: Settings) -> bytes | None:
    if settings.admin_token_file is None:
        return None
    secret = settings.admin_token_file.read_text().strip()
    if len(secret) < 24:
        raise SystemExit("errand: the admin token must be at least 24 characters")
    return hashlib.sha256(secret.encode()).digest()


def create_app(settings: Settings | None = None, services: Runtime | None = None) -> Flask:
    """`services`: a Runtime already built (tests, scripts); by default one is built from
    `settings` and Redis's eviction policy is checked."""
    settings = settings or load_settings()
    configure_logging()
    configure_audit_logging()
    if services is None:
        services = build_services(settings)
        check_redis_policy(services, settings)
    app = Flask("errand")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_BODY_BYTES
    app.config["MAX_FORM_PARTS"] = 100
    app.config["ERRAND_ADMIN_TOKEN_SHA256"] = read_admin_token_hash(settings)
    app.extensions["errand"] = services
    runtime = services
    app.extensions["errand.gauges"] = ScrapeGauges(
        lambda now: runtime.gauges.read(
            now=now, ended_before=now - settings.reconcile_after_seconds
        ),
        runtime.clock.now,
        cache_seconds=settings.observability.metrics_cache_seconds,
    )

    @app.before_request
    def _assign_request_id() -> None:
        request_id()  # before_request must return None, or Flask treats it as the response

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        # On every response, errors included: the id the audit events and log lines carry.
        response.headers["X-Request-Id"] = request_id()
        return response

    @app.after_request
    def _observe(response: Response) -> Response:
        # The endpoint name (a fixed set), never the path: paths can carry ids.
        endpoint = request.endpoint or "unknown"
        HTTP_REQUESTS.labels(endpoint, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            HTTP_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return response

    register_error_handlers(app)
    install_request_spans(app, services.tracer)
    for module in (
        token,
        introspect,
        revoke,
        tasks,
        wellknown,
        health,
        admin,
        audit_admin,
        revocation_feed,
        inventory,
        approvals,
        task_proof,
    ):
        app.register_blueprint(module.bp)
    # The console signs in with the admin credential: without one it has no door.
    if settings.console and app.config["ERRAND_ADMIN_TOKEN_SHA256"] is not None:
        app.register_blueprint(console_bp)
    return app
