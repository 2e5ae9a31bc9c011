"""POST /introspect (RFC 7662), POST /revoke (RFC 7009), POST /tasks/complete."""

from __future__ import annotations

from flask import Blueprint, Response, request

from broker.domain.introspection import introspect
from broker.domain.revocation import complete_task, revoke_token
from broker.http.client_auth import authenticate_client, bearer_token
from broker.http.context import client_address, request_id, services
from broker.http.forms import TokenForm, load, read_form
from broker.http.responses import json_response

TOKEN_FORM = TokenForm()  # schemas are built once: building one costs more than using it
bp = Blueprint("introspect", __name__)


@bp.post("/introspect")
def introspect_view() -> Response:
    svc = services()
    form = read_form(request)
    # RFC 7662 §2.1: introspection is for authenticated resource servers only.
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


@bp.post("/revoke")
def revoke_view() -> Response:
    """Anyone holding a token may revoke it (possession is the proof); an authenticated
    resource-server client may revoke tokens presented to it. RFC 7009 §2.2: the answer is
    200 whether or not the token was known."""
    svc = services()
    form = read_form(request)
    client = authenticate_client(request, form, svc.config, required=False)
    data = load(TOKEN_FORM, form)
    actor = f"client:{client.client_id}" if client else "holder"
    revoke_token(data["token"], svc, actor=actor, request_id=request_id())
    return json_response({})


@bp.post("/tasks/complete")
def complete_view() -> Response:
    """A holder of any token of a task declares the task complete (Authorization: Bearer)."""
    token = bearer_token(request)
    return json_response(
        complete_task(token, services(), request_id=request_id(), client_address=client_address())
    )
