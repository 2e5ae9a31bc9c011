"""POST /introspect (RFC 7662): for authenticated resource servers only (§2.1)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from broker.domain.introspection import introspect
from broker.http.client_auth import authenticate_client
from broker.http.context import client_address, request_id, services
from broker.http.forms import TokenForm, load, read_form
from broker.http.responses import json_response

TOKEN_FORM = TokenForm()  # schemas are built once: building one costs more than using it
bp = Blueprint("introspect", __name__)


@bp.post("/introspect")
def introspect_view() -> Response:
    svc = services()
    form = read_form(request)
    client = authenticate_client(request, form, svc.config, required=True)
    data = load(TOKEN_FORM, form)
    return json_response(
        introspect(
            data["token"],
            svc,
            client_id=client.client_id if client else None,
            request_id=request_id(),
            client_address=client_address(),
        )
    )
