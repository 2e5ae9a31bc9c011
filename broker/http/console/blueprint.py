"""The console's Blueprint and what runs around every one of its requests: the gate
(broker/http/console/guard.py) before, the security headers after, errors as HTML pages."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request
from werkzeug.wrappers import Response

from broker.errors import BrokerError
from broker.http.console import guard
from broker.http.context import services

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")

# Reachable without a session: the login form, its post, and the stylesheet it uses.
OPEN_ENDPOINTS = {"console.login_form", "console.login", "console.style"}


@bp.before_request
def _gate() -> Response | None:
    is_post = request.method == "POST"
    if is_post:
        guard.check_origin()  # first: a cross-site post learns nothing, not even session state
    if request.endpoint in OPEN_ENDPOINTS:
        if is_post:
            guard.check_login_token()
        return None
    session = guard.current()
    if session is None:
        return guard.to_login()
    if is_post:
        guard.check_session_token(session)
    return None


@bp.after_app_request
def _headers(response: Response) -> Response:
    # Every answer under /console, the app's own 404 and 405 included.
    if request.path == "/console" or request.path.startswith("/console/"):
        guard.add_headers(response)
    return response


@bp.context_processor
def _page_context() -> dict[str, Any]:
    session = guard.current() if request.endpoint not in OPEN_ENDPOINTS else None
    return {"csrf_token": session.csrf if session else "", "signed_in": session is not None}


@bp.errorhandler(guard.CsrfRefused)
def _csrf_refused(err: guard.CsrfRefused) -> tuple[str, int]:
    session = guard.current() if err.reason == "csrf_token" else None
    services().audit.record(guard.refusal_event(err.reason, session))
    message = (
        "This form did not come from a console page of this session (a cross-site request, "
        "or a page left open from an earlier session). Nothing was changed."
    )
    return render_template("console/message.html", title="Refused", message=message), 403


@bp.errorhandler(BrokerError)
def _broker_error(err: BrokerError) -> tuple[str, int]:
    # The same short description a JSON client gets; the detail stays in the logs and audit.
    page = render_template("console/message.html", title="Not done", message=err.description)
    return page, err.status_code
