"""POST /token: grant_type -> handler table.

Two grants, one verification path: RFC 8693 token exchange (`subject_token`) and the RFC 7523
jwt-bearer grant (`assertion`), which clients built for Keycloak-style servers send. Both
take Errand's extension parameters (audience/resource, task_id, purpose, requested_lifetime).

A handler only turns the form into an ExchangeRequest; the view runs the exchange and renders
it. The request's audit event is opened here, before the form is read: a refusal while
reading it is recorded here, everything after by the exchange (domain/exchange.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request

from broker.domain.audit_event import ExchangeAudit
from broker.domain.exchange import exchange_token
from broker.domain.exchange_refusals import record_refusal
from broker.domain.models import (
    GRANT_TYPE_JWT_BEARER,
    GRANT_TYPE_TOKEN_EXCHANGE,
    TOKEN_TYPE_JWT,
    ExchangeRequest,
    IssuedToken,
)
from broker.domain.tasks import parse_labels
from broker.errors import BrokerError, InvalidRequest, UnsupportedGrantType
from broker.http.context import client_address, request_id, services
from broker.http.dpop import nonce_headers, with_dpop
from broker.http.forms import JwtBearerForm, TokenExchangeForm, load, parse_scope, read_form
from broker.http.responses import json_response

# Schemas are built once: building one costs more than loading a form with it.
EXCHANGE_FORM = TokenExchangeForm()
JWT_BEARER_FORM = JwtBearerForm()
bp = Blueprint("token", __name__)


def _refuse_delegation(form: Mapping[str, Any]) -> None:
    """RFC 8693 §2.1 `actor_token` asks for delegation, which only token exchange does
    (domain/delegation.py): on another grant it is refused, never ignored (present at all,
    even empty)."""
    if "actor_token" in form or "actor_token_type" in form:
        raise InvalidRequest(
            "actor_token: delegation takes the token-exchange grant",
            reason="actor_token_unsupported",
        )


def _actor(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """RFC 8693 §2.1: actor_token_type is required with an actor_token, and absent without."""
    token, token_type = data["actor_token"], data["actor_token_type"]
    if token is not None and token_type is None:
        raise InvalidRequest(
            "actor_token_type: required with actor_token", reason="actor_token_incomplete"
        )
    if token is None and token_type is not None:
        raise InvalidRequest(
            "actor_token: required with actor_token_type", reason="actor_token_incomplete"
        )
    return token, token_type


def _lifetime(data: Mapping[str, Any]) -> int | None:
    return int(data["requested_lifetime"]) if data["requested_lifetime"] else None


def _task(data: Mapping[str, Any]) -> dict[str, Any]:
    """The task lifecycle parameters (docs/agents.md), as ExchangeRequest fields."""
    deadline = data["task_deadline"]
    return {
        "task_deadline": int(deadline) if deadline else None,
        "task_labels": parse_labels(data["task_label"]),
    }


def _token_exchange(form: dict[str, Any]) -> ExchangeRequest:
    data = load(EXCHANGE_FORM, form)
    actor_token, actor_token_type = _actor(data)
    return ExchangeRequest(
        subject_token=data["subject_token"],
        subject_token_type=data["subject_token_type"],
        audiences=tuple(data["audience"]) + tuple(data["resource"]),
        scopes=parse_scope(data["scope"]),
        task_id=data["task_id"],
        purpose=data["purpose"],
        approval_id=data["approval_id"],
        requested_lifetime=_lifetime(data),
        requested_token_type=data["requested_token_type"],
        client_address=client_address(),
        request_id=request_id(),
        **_task(data),
        actor_token=actor_token,
        actor_token_type=actor_token_type,
        may_act=data["may_act"],
    )


def _jwt_bearer(form: dict[str, Any]) -> ExchangeRequest:
    """RFC 7523 §2.1: the assertion is the workload JWT; it goes through the same verifier,
    replay guard, identity match and policy as a subject_token."""
    data = load(JWT_BEARER_FORM, form)
    _refuse_delegation(form)  # load() drops parameters the schema does not name
    return ExchangeRequest(
        subject_token=data["assertion"],
        subject_token_type=TOKEN_TYPE_JWT,
        audiences=tuple(data["audience"]) + tuple(data["resource"]),
        scopes=parse_scope(data["scope"]),
        task_id=data["task_id"],
        purpose=data["purpose"],
        approval_id=data["approval_id"],
        requested_lifetime=_lifetime(data),
        client_address=client_address(),
        request_id=request_id(),
        grant_type=GRANT_TYPE_JWT_BEARER,
        **_task(data),
    )


@dataclass(frozen=True)
class GrantHandler:
    read: Callable[[dict[str, Any]], ExchangeRequest]
    # RFC 8693 §2.2.1 names the issued token type; the RFC 6749 §5.1 response has none.
    with_issued_type: bool


GRANT_HANDLERS: dict[str, GrantHandler] = {
    GRANT_TYPE_TOKEN_EXCHANGE: GrantHandler(_token_exchange, with_issued_type=True),
    GRANT_TYPE_JWT_BEARER: GrantHandler(_jwt_bearer, with_issued_type=False),
}


def _read() -> tuple[ExchangeRequest, GrantHandler]:
    form = read_form(request, repeatable=("audience", "resource", "task_label"))
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidRequest("grant_type: missing", reason="missing_grant_type")
    handler = GRANT_HANDLERS.get(grant_type) if isinstance(grant_type, str) else None
    if handler is None:
        raise UnsupportedGrantType()
    return handler.read(form), handler


@bp.post("/token")
def token() -> Response:
    svc = services()
    audit = ExchangeAudit(
        request_id=request_id(),
        client_address=client_address(),
        subject_token=request.form.get("subject_token") or request.form.get("assertion"),
    )
    try:
        req, handler = _read()
        req = with_dpop(req, svc)  # RFC 9449 §5: checked before the exchange spends anything
    except BrokerError as err:
        refusal = record_refusal(svc, audit, err, address_counted=False, now=svc.clock.now())
        if refusal is err:
            raise
        raise refusal from err
    resp = _token_response(exchange_token(req, svc, audit), handler.with_issued_type)
    resp.headers.update(nonce_headers(svc))
    return resp


def _token_response(issued: IssuedToken, with_issued_type: bool) -> Response:
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": issued.grant.token_type,  # DPoP when bound to the proof's key
        "expires_in": issued.expires_in,
        "scope": " ".join(issued.grant.scopes),
        "task_id": issued.grant.task_id,  # Errand's extension: the task the token is bound to
    }
    if with_issued_type:
        body["issued_token_type"] = issued.issued_token_type
    return json_response(body)
