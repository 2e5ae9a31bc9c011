"""POST /token: grant_type -> handler table. Token exchange (RFC 8693) is the one entry today."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request

from broker.domain.exchange import exchange_token
from broker.domain.models import GRANT_TYPE_TOKEN_EXCHANGE, ExchangeRequest
from broker.domain.ports import Services
from broker.errors import InvalidRequest, UnsupportedGrantType
from broker.http.context import client_address, request_id, services
from broker.http.forms import TokenExchangeForm, load, parse_scope, read_form
from broker.http.responses import json_response

bp = Blueprint("token", __name__)


def _token_exchange(form: dict[str, Any], svc: Services) -> Response:
    data = load(TokenExchangeForm(), form)
    if data["actor_token"] is not None or data["actor_token_type"] is not None:
        raise InvalidRequest("actor_token: delegation is not supported", reason="actor_token_unsupported")
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
    return json_response(
        {
            "access_token": issued.access_token,
            "issued_token_type": issued.issued_token_type,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": " ".join(issued.grant.scopes),
            "task_id": issued.grant.task_id,
        }
    )


GRANT_HANDLERS: dict[str, Callable[[dict[str, Any], Services], Response]] = {
    GRANT_TYPE_TOKEN_EXCHANGE: _token_exchange,
}


@bp.post("/token")
def token() -> Response:
    form = read_form(request, repeatable=("audience", "resource"))
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidRequest("grant_type: missing", reason="missing_grant_type")
    handler = GRANT_HANDLERS.get(grant_type) if isinstance(grant_type, str) else None
    if handler is None:
        raise UnsupportedGrantType()
    return handler(form, services())
