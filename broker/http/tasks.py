"""POST /tasks/complete: a holder of a live token of a task declares the task complete."""

from __future__ import annotations

from flask import Blueprint, Response, request

from broker.domain.task_completion import complete_task
from broker.http.client_auth import bearer_token
from broker.http.context import client_address, request_id, services
from broker.http.responses import json_response

bp = Blueprint("tasks", __name__)


@bp.post("/tasks/complete")
def complete_view() -> Response:
    """The token comes as `Authorization: Bearer` (RFC 6750 §2.1), never in the body."""
    token = bearer_token(request)
    return json_response(
        complete_task(token, services(), request_id=request_id(), client_address=client_address())
    )
