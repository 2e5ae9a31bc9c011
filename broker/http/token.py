"""POST /token: grant_type -> handler table.

Two grants, one verification path: RFC 8693 token exchange (`subject_token`) and the RFC 7523
jwt-bearer grant (`assertion`), which clients built for Keycloak-style servers send. Both
take Errand's extension parameters (audience/resource, task_id, purpose, requested_lifetime)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request

from broker.domain.exchange import exchange_token
from broker.domain.limits import address_over_limit
from broker.domain.models import (
    GRANT_TYPE_JWT_BEARER,
    GRANT_TYPE_TOKEN_EXCHANGE,
    TOKEN_TYPE_JWT,
    ExchangeRequest,
    IssuedToken,
)
from broker.domain.ports import Services
from broker.errors import BrokerError, InvalidRequest, TooManyRequests, UnsupportedGrantType
from broker.http.context import client_address, request_id, services
from broker.http.forms import JwtBearerForm, TokenExchangeForm, load, parse_scope, read_form
from broker.http.responses import json_response
from broker.identity.verifier import token_sha256

# Schemas are built once: building one costs more than loading a form with it.
EXCHANGE_FORM = TokenExchangeForm()
JWT_BEARER_FORM = JwtBearerForm()
bp = Blueprint("token", __name__)


def _token_exchange(form: dict[str, Any], svc: Services) -> Response:
    data = load(EXCHANGE_FORM, form)
    if data["actor_token"] is not None or data["actor_token_type"] is not None:
        raise InvalidRequest(
            "actor_token: delegation is not supported", reason="actor_token_unsupported"
        )
    req = ExchangeRequest(
        subject_token=data["subject_token"],
        subject_token_type=data["subject_token_type"],
        audiences=tuple(data["audience"]) + tuple(data["resource"]),
        scopes=parse_scope(data["scope"]),
        task_id=data["task_id"],
        purpose=data["purpose"],
        requested_lifetime=int(data["requested_lifetime"]) if data["requested_lifetime"] else None,
        requested_token_type=data["requested_token_type"],
        client_address=client_address(),
        request_id=request_id(),
    )
    issued = exchange_token(req, svc)
    # RFC 8693 §2.2.1, plus the task the token is bound to.
    return _token_response(issued, with_issued_type=True)


def _jwt_bearer(form: dict[str, Any], svc: Services) -> Response:
    """RFC 7523 §2.1: the assertion is the workload JWT; it goes through the same verifier,
    replay guard, identity match and policy as a subject_token."""
    data = load(JWT_BEARER_FORM, form)
    req = ExchangeRequest(
        subject_token=data["assertion"],
        subject_token_type=TOKEN_TYPE_JWT,
        audiences=tuple(data["audience"]) + tuple(data["resource"]),
        scopes=parse_scope(data["scope"]),
        task_id=data["task_id"],
        purpose=data["purpose"],
        requested_lifetime=int(data["requested_lifetime"]) if data["requested_lifetime"] else None,
        client_address=client_address(),
        request_id=request_id(),
        grant_type=GRANT_TYPE_JWT_BEARER,
    )
    # RFC 6749 §5.1 response (issued_token_type belongs to token exchange only).
    return _token_response(exchange_token(req, svc), with_issued_type=False)


def _token_response(issued: IssuedToken, *, with_issued_type: bool) -> Response:
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": " ".join(issued.grant.scopes),
        "task_id": issued.grant.task_id,
    }
    if with_issued_type:
        body["issued_token_type"] = issued.issued_token_type
    return json_response(body)


GRANT_HANDLERS: dict[str, Callable[[dict[str, Any], Services], Response]] = {
    GRANT_TYPE_TOKEN_EXCHANGE: _token_exchange,
    GRANT_TYPE_JWT_BEARER: _jwt_bearer,
}


@bp.post("/token")
def token() -> Response:
    try:
        form = read_form(request, repeatable=("audience", "resource"))
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type: missing", reason="missing_grant_type")
        handler = GRANT_HANDLERS.get(grant_type) if isinstance(grant_type, str) else None
        if handler is None:
            raise UnsupportedGrantType()
        return handler(form, services())
    except BrokerError as err:
        if not err.address_counted and not isinstance(err, TooManyRequests):
            # Refused before the token named an issuer (malformed form or token): count the
            # address now, so a flood of garbage from one address meets the limit too.
            over = address_over_limit(services(), client_address())
            if over is not None:
                # Over the limit: log only, so a flood cannot churn the bounded audit stream.
                _audit_refusal(over, stream=False)
                raise over from err
        if not err.audited:
            _audit_refusal(err)
        raise


def _audit_refusal(err: BrokerError, *, stream: bool = True) -> None:
    """Requests refused before the domain saw them (form, content type, grant type) are
    audited too: one event per denial (SECURITY.md). Only a hash of any token sent."""
    raw = request.form.get("subject_token") or request.form.get("assertion") or ""
    services().audit.record(
        {
            "ts": services().clock.now(),
            "event": "token.request",
            "outcome": "denied",
            "error": err.error,
            "reason": err.reason,
            "description": err.description,
            "request_id": request_id(),
            "client_address": client_address(),
            "token_sha256": token_sha256(raw) if raw else None,
        },
        stored=not stream,
    )
    err.audited = True
