"""POST /revoke (RFC 7009): end the grant behind one access token."""

from __future__ import annotations

from flask import Blueprint, Response, request

from broker.domain.token_revocation import revoke_token
from broker.http.client_auth import authenticate_client
from broker.http.context import request_id, services
from broker.http.forms import TokenForm, load, read_form
from broker.http.responses import json_response

TOKEN_FORM = TokenForm()  # schemas are built once: building one costs more than using it
bp = Blueprint("revoke", __name__)


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
