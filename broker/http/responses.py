"""JSON responses with OAuth's no-store headers, and the error handlers (RFC 6749 §5.2)."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from broker.domain.audit_event import ExchangeAudit
from broker.domain.exchange_refusals import record_refusal
from broker.errors import BrokerError, InvalidRequest
from broker.http.context import client_address, request_id, services

log = logging.getLogger("errand.http")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_NO_STORE_ITEMS = list(NO_STORE.items())


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """The body as Flask's jsonify writes it out of debug mode (compact, sorted keys, ASCII,
    a final newline), built directly: jsonify's provider lookup and header merging were a few
    per cent of an introspection. Anything plain JSON cannot hold goes through jsonify."""
    try:
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    except TypeError:
        resp = jsonify(body)
        resp.status_code = status
        resp.headers.update(NO_STORE)
        if headers:
            resp.headers.update(headers)
        return resp
    return Response(
        text + "\n",
        status=status,
        headers=[*_NO_STORE_ITEMS, *headers.items()] if headers else _NO_STORE_ITEMS,
        mimetype="application/json",
    )


def error_response(err: BrokerError) -> Response:
    # A polling answer (authorization_pending, slow_down) also says what to poll with.
    extra = getattr(err, "response_fields", None) or {}
    return json_response(
        {"error": err.error, "error_description": err.description, **extra},
        err.status_code,
        err.headers(),
    )


def _oversized_token_request() -> Response | None:
    """A body over the limit is refused by Werkzeug before any view runs. It is pre-exchange
    garbage like a malformed form (http/token.py): it counts against the client address and
    is audited; once the address is over its limit the answer is that 429, audited as a log
    line only, so a flood of large bodies cannot churn the bounded audit stream."""
    svc = services()
    audit = ExchangeAudit(
        request_id=request_id(), client_address=client_address(), subject_token=None
    )
    too_large = InvalidRequest("The request body is too large.", reason="body_too_large")
    refusal = record_refusal(svc, audit, too_large, address_counted=False, now=svc.clock.now())
    return error_response(refusal) if refusal is not too_large else None


def register_error_handlers(app: Flask) -> None:
    """RFC 6749 §5.2 bodies for every error. StoreUnavailable (Redis down, read-only, out of
    memory) is a TemporarilyUnavailable, so `_broker_error` answers it too: 503 with
    Retry-After, the Redis detail logged, never shown. No view translates it."""

    @app.errorhandler(BrokerError)
    def _broker_error(err: BrokerError) -> Response:
        if err.status_code >= 500:
            log.warning(
                "request failed",
                extra={"error": err.error, "debug": err.debug, "request_id": g.get("request_id")},
            )
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 400
        if request.path == "/token" and status == 413:
            limited = _oversized_token_request()
            if limited is not None:
                return limited
        code = {
            404: "not_found",
            405: "invalid_request",
            413: "invalid_request",
            415: "invalid_request",
        }.get(status, "invalid_request")
        description = {
            404: "No such endpoint.",
            405: "Method not allowed.",
            413: "The request body is too large.",
        }.get(status, "The request is malformed.")
        return json_response({"error": code, "error_description": description}, status)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        # Never a stack trace to the client; the log keeps the detail (not the request body).
        log.exception("unexpected error", extra={"request_id": g.get("request_id")})
        return json_response(
            {
                "error": "server_error",
                "error_description": "The server could not complete the request.",
            },
            500,
        )
