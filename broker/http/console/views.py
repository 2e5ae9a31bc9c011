"""The console's pages: sign-in, the overview, live grants, one task's path, the identity
inventory and revoke-all. Everything is read through the same domain and store functions as
the admin API (broker/http/admin.py, broker/http/inventory.py); the actions are in
broker/http/console/actions.py."""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict
from importlib.resources import files
from typing import Any

from flask import current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from broker.domain.access_review import access_review
from broker.domain.approvals import list_pending
from broker.domain.models import Grant, is_safe_id
from broker.domain.task_lifecycle import TaskCaller
from broker.domain.task_lifecycle import show as show_task
from broker.errors import InvalidRequest, InvalidToken, NotFound, TooManyRequests
from broker.http.client_auth import check_admin_secret
from broker.http.console import guard
from broker.http.console import session as rules
from broker.http.console.blueprint import bp
from broker.http.console.events import event_rows, iso, task_state
from broker.http.context import client_address, request_id, services
from broker.http.process import runtime

PAGE_SIZE = 50
SCAN_LIMIT = 1000  # live grants read per grants page, soonest to expire first: the bound
TASK_EVENTS = 500  # the newest events of one task the page shows
MAX_QUERY = 100
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")
_STYLE = (files("broker.http.console") / "templates" / "console" / "console.css").read_text()


bp.add_app_template_filter(iso, "iso")


def _safe(name: str) -> str:
    value = request.args.get(name, "").strip()
    if value and not is_safe_id(value):
        raise InvalidRequest(f"{name}: not a valid identifier", reason="bad_parameter")
    return value


def _page() -> int:
    raw = request.args.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= SCAN_LIMIT // PAGE_SIZE:
        raise InvalidRequest("page: out of range", reason="bad_parameter")
    return int(raw)


def _count_arg(name: str) -> int | None:
    """The count an action redirected with, to say what it did; nothing else of the URL."""
    raw = request.args.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) <= 9 else None


@bp.get("/style.css")
def style() -> Response:
    return Response(_STYLE, mimetype="text/css")


# -- sign in and out --------------------------------------------------------------------------
@bp.get("/login")
def login_form() -> Response:
    if guard.current() is not None:
        return redirect(url_for("console.overview"), code=303)
    return _login_page()


def _login_page(error: str = "", status: int = 200) -> Response:
    nonce = rules.new_login_nonce()
    page = render_template(
        "console/login.html",
        login_token=rules.login_token(guard.signing_key(), nonce),
        error=error,
        approvers=bool(runtime().config.policy_options.approvers),
    )
    response = Response(page, status=status, mimetype="text/html")
    guard.set_cookie(response, guard.LOGIN_COOKIE, nonce, guard.LOGIN_COOKIE_SECONDS)
    return response


@bp.post("/login")
def login() -> Response:
    secret = request.form.get("credential", "")
    admin: bytes = current_app.config["ERRAND_ADMIN_TOKEN_SHA256"]
    try:
        check_admin_secret(secret, admin, via="console")
    except TooManyRequests:
        return _login_page("Too many failed sign-ins from this address; wait and retry.", 429)
    except InvalidToken:
        return _login_page("That is not the admin credential.", 401)
    svc = runtime()
    # Checked after the credential, so the form tells nobody who the approvers are.
    approver = request.form.get("approver", "").strip()
    if approver and approver not in svc.config.policy_options.approvers:
        return _login_page("That identity is not an approver of this broker.", 400)
    made = rules.new_session(guard.signing_key(), now=svc.clock.now())
    record = {**made.record, "approver": approver}
    guard.sessions().create(made.digest, record, ttl_seconds=svc.settings.console_idle_seconds)
    session = guard.ConsoleSession(made.digest, made.record["csrf"], approver)
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": "console.login",
            "outcome": "allowed",
            "actor": session.actor,
            "approver": approver or None,
            "client_address": client_address(),
            "request_id": request_id(),
        }
    )
    response = redirect(url_for("console.overview"), code=303)
    # No max_age: a browser-session cookie; the server's timeouts bound it.
    guard.set_cookie(response, guard.SESSION_COOKIE, made.cookie, None)
    guard.clear_cookie(response, guard.LOGIN_COOKIE)
    return response


@bp.post("/logout")
def logout() -> Response:
    session = guard.current()
    assert session is not None  # the gate let no POST through without one
    guard.sessions().delete(session.digest)
    svc = runtime()
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": "console.logout",
            "outcome": "done",
            "actor": session.actor,
            "request_id": request_id(),
        }
    )
    response = guard.to_login()
    guard.clear_cookie(response, guard.SESSION_COOKIE)
    return response


# -- pages ----------------------------------------------------------------------------------
@bp.get("", strict_slashes=False)
@bp.get("/")
def overview() -> str:
    svc = services()
    review = access_review(svc)
    return render_template(
        "console/overview.html",
        summary=review["summary"],
        epoch=svc.store.current_epoch(),
        live=len(
            svc.store.list_grants(
                now=int(svc.clock.now()), task_id=None, identity_ids=None, limit=SCAN_LIMIT
            )
        ),
        scan_limit=SCAN_LIMIT,
        types=sorted({i.type for i in svc.config.identities}),
        owners=sorted({i.owner for i in svc.config.identities}),
    )


def _grant_row(grant: Grant) -> dict[str, Any]:
    return asdict(grant)


def _matches(grant: Grant, query: str) -> bool:
    if not query:
        return True
    haystack = " ".join(
        [
            grant.jti,
            grant.identity_id,
            grant.owner,
            grant.task_id,
            grant.purpose,
            grant.identity_type,
            *grant.audiences,
            *grant.scopes,
        ]
    ).lower()
    return query.lower() in haystack


@bp.get("/grants")
def grants() -> str:
    svc = services()
    kind, owner, identity, task = _safe("type"), _safe("owner"), _safe("identity"), _safe("task")
    query = request.args.get("q", "").strip()
    if len(query) > MAX_QUERY or not _PRINTABLE.fullmatch(query):
        raise InvalidRequest("q: at most 100 printable characters", reason="bad_parameter")
    page = _page()
    identity_ids: list[str] | None = None
    if identity:
        identity_ids = [identity]
    elif kind or owner:
        identity_ids = [
            i.id
            for i in svc.config.identities
            if (not kind or i.type == kind) and (not owner or i.owner == owner)
        ]
    found = svc.store.list_grants(
        now=int(svc.clock.now()),
        task_id=task or None,
        identity_ids=identity_ids,
        limit=SCAN_LIMIT,
    )
    # Filters the index could not apply (a task and an identity together, say), then the text.
    rows = [
        g
        for g in found
        if (not identity or g.identity_id == identity)
        and (not kind or g.identity_type == kind)
        and (not owner or g.owner == owner)
        and _matches(g, query)
    ]
    start = (page - 1) * PAGE_SIZE
    return render_template(
        "console/grants.html",
        rows=[_grant_row(g) for g in rows[start : start + PAGE_SIZE]],
        total=len(rows),
        truncated=len(found) >= SCAN_LIMIT,
        scan_limit=SCAN_LIMIT,
        page=page,
        pages=max(1, -(-len(rows) // PAGE_SIZE)),
        filters={"type": kind, "owner": owner, "identity": identity, "task": task, "q": query},
        types=sorted({i.type for i in svc.config.identities}),
        owners=sorted({i.owner for i in svc.config.identities}),
    )


@bp.get("/tasks")
def find_task() -> Response:
    task = _safe("task")
    if not task:
        return redirect(url_for("console.grants"), code=303)
    return redirect(url_for("console.task", task_id=task), code=303)


@bp.get("/tasks/<task_id>")
def task(task_id: str) -> str:
    if not is_safe_id(task_id):
        raise InvalidRequest("task: not a valid identifier", reason="bad_parameter")
    svc = services()
    events = list(reversed(svc.store.audit_events(task_id=task_id, limit=TASK_EVENTS)))
    live = svc.store.list_grants(
        now=int(svc.clock.now()), task_id=task_id, identity_ids=None, limit=SCAN_LIMIT
    )
    session = guard.current()
    assert session is not None  # the gate let no request through without one
    # The lifecycle store is the truth (what GET /tasks/{id} shows); the audit is only asked
    # for a task the store no longer holds (ended long ago) or never held.
    try:
        lifecycle: dict[str, Any] | None = show_task(
            task_id, TaskCaller.operator(session.actor), svc
        )
    except NotFound:
        lifecycle = None
    return render_template(
        "console/task.html",
        task_id=task_id,
        lifecycle=lifecycle,
        state=lifecycle["state"] if lifecycle else task_state(events, live_grants=len(live)),
        events=event_rows(events),
        capped=len(events) >= TASK_EVENTS,
        live=[_grant_row(g) for g in live],
        done=_count_arg("revoked"),
    )


@bp.get("/approvals")
def approvals() -> str:
    session = guard.current()
    assert session is not None  # the gate let no request through without one
    decided = request.args.get("decided", "")
    return render_template(
        "console/approvals.html",
        approvals=list_pending(services()),
        approver=session.approver,
        decided=decided if decided in ("approved", "denied") else "",
    )


@bp.get("/identities")
def identities() -> str:
    report = access_review(services())
    return render_template(
        "console/identities.html",
        report=report,
        done=_count_arg("revoked"),
        done_identity=_safe("identity"),
    )


CONFIRM_WORDS = ("everything", "incident", "all-grants", "cut-now", "revoke-all")


@bp.get("/revoke-all")
def revoke_all_form() -> str:
    svc = services()
    return render_template(
        "console/revoke_all.html",
        word=secrets.choice(CONFIRM_WORDS),
        epoch=svc.store.current_epoch(),
    )


@bp.get("/revoke-all/<int:epoch>")
def revoke_all_status(epoch: int) -> str:
    svc = services()
    current = svc.store.current_epoch()
    if not 1 <= epoch <= current:
        raise InvalidRequest("no such revoke-all epoch", reason="unknown_epoch")
    return render_template(
        "console/epoch.html",
        epoch=epoch,
        current=current,
        progress=svc.revocations.fanout_progress(epoch),
        revoked=_count_arg("revoked"),
    )
