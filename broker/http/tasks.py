"""A task's lifecycle over HTTP (docs/api.md, "Tasks"; docs/agents.md).

    POST /tasks/complete                  a token of the task completes its own task
    GET  /tasks/{task_id}                 state, owner, deadline, labels, live grants
    POST /tasks/{task_id}/{action}        suspend | resume | complete | fail | cancel

The caller is the task's owner, with a token of the task as `Authorization: Bearer`
(RFC 6750 §2.1, never in the body), or, for a DPoP-bound token, as `Authorization: DPoP`
with a `DPoP` proof of its key (RFC 9449 §7.1); or an operator with the admin credential as
Bearer. A token of ours is a JWT (three dot-separated parts); the admin credential is not,
so the header's shape alone picks the check, and each check is the one it always is."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from broker.domain.models import is_safe_id
from broker.domain.task_completion import complete_task
from broker.domain.task_lifecycle import TaskCaller, owner_from_token, show, transition
from broker.domain.tasks import ACTIONS
from broker.domain.token_presentation import BEARER, DPOP, PresentedToken
from broker.errors import InvalidRequest, InvalidToken, NotFound
from broker.http.client_auth import bearer_token, check_admin, operator_label
from broker.http.context import client_address, request_id, services
from broker.http.responses import json_response

bp = Blueprint("tasks", __name__)


def _presented() -> PresentedToken | None:
    """The access token of an `Authorization: DPoP` header, with the request's proofs; None
    for any other scheme (Bearer is read as it always was)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != DPOP:
        return None
    if not value.strip():
        raise InvalidToken("an access token is required", reason="no_bearer_token")
    return PresentedToken(
        value.strip(),
        scheme=DPOP,
        proofs=tuple(request.headers.getlist("DPoP")),
        method=request.method,
        path=request.path,
    )


@bp.post("/tasks/complete")
def complete_view() -> Response:
    """The token comes in the Authorization header (RFC 6750 §2.1), never in the body."""
    presented = _presented() or PresentedToken(bearer_token(request), scheme=BEARER)
    return json_response(
        complete_task(
            presented, services(), request_id=request_id(), client_address=client_address()
        )
    )


def _caller(task_id: str) -> TaskCaller:
    if not is_safe_id(task_id):
        raise InvalidRequest("task_id: not a valid task id", reason="bad_parameter")
    presented = _presented()
    if presented is not None:
        caller, _ = owner_from_token(presented, task_id, services())
        return caller
    token = bearer_token(request)
    if token.count(".") == 2:
        caller, _ = owner_from_token(PresentedToken(token, scheme=BEARER), task_id, services())
        return caller
    check_admin(request, current_app.config.get("ERRAND_ADMIN_TOKEN_SHA256"))
    return TaskCaller.operator(operator_label(request))


@bp.get("/tasks/<task_id>")
def show_view(task_id: str) -> Response:
    return json_response(show(task_id, _caller(task_id), services()))


@bp.post("/tasks/<task_id>/<action>")
def transition_view(task_id: str, action: str) -> Response:
    if action not in ACTIONS:
        raise NotFound("No such endpoint.", reason="not_found")
    caller = _caller(task_id)
    return json_response(
        transition(
            task_id,
            action,
            caller,
            services(),
            request_id=request_id(),
            client_address=client_address(),
        )
    )
