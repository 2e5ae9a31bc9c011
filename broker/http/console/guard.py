"""The console's gate: the session cookie, the CSRF checks on every POST and the security
headers on every answer under /console (broker/http/console/session.py holds the rules).

Order for a POST: where it came from (Origin, else Referer), then the session, then the
form's CSRF token. A refusal is 403 and an audit event (`console.refused`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, url_for
from werkzeug.wrappers import Response

from broker.http.console import session as rules
from broker.http.context import client_address, request_id
from broker.http.process import runtime
from broker.runtime import ConsoleSessionStore

SESSION_COOKIE = "errand_console"
LOGIN_COOKIE = "errand_console_login"
COOKIE_PATH = "/console"
LOGIN_COOKIE_SECONDS = 600  # time to type the credential into the login form

# Nothing but our own stylesheet; forms post only here; no framing; no scripts at all.
CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer the browser sends `Origin: null` on the
    # console's own form posts (Fetch, "append a request Origin header"), which would leave
    # the origin check nothing to check. same-origin still sends no Referer to anyone else.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class CsrfRefused(Exception):
    """A POST that did not come from a console page of this session: 403, audited."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ConsoleSession:
    digest: str
    csrf: str
    # The approver identity the operator named at sign-in ("" for none): the identity this
    # session approves or denies as (docs/console.md, "Approvals").
    approver: str = ""

    @property
    def actor(self) -> str:
        """Who acted, for audit: a stable label of the session, never its cookie."""
        return f"console:{self.digest[:12]}"


def signing_key() -> bytes:
    admin: bytes = current_app.config["ERRAND_ADMIN_TOKEN_SHA256"]
    return rules.session_key(admin)


def sessions() -> ConsoleSessionStore:
    store = runtime().console_sessions
    if store is None:  # create_app registers the console only where a store exists
        raise RuntimeError("this process has no console session store")
    return store


def cookie_secure() -> bool:
    """Secure, unless the broker's issuer is plain http on a loopback host (`make run`):
    a browser would not send a Secure cookie back over http anywhere else."""
    parts = urlsplit(runtime().config.broker.issuer)
    if parts.scheme != "http":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=cookie_secure(),
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, secure=cookie_secure(), httponly=True, samesite="Strict"
    )


def current() -> ConsoleSession | None:
    """The session this request's cookie names, if it is alive (noting its use)."""
    if "console_session" in g:
        found: ConsoleSession | None = g.console_session
        return found
    found = None
    digest = rules.session_digest(request.cookies.get(SESSION_COOKIE), signing_key())
    if digest is not None:
        settings = runtime().settings
        now = runtime().clock.now()
        record = sessions().touch(digest, now=now, ttl_seconds=settings.console_idle_seconds)
        if rules.session_alive(
            record,
            now=now,
            idle_seconds=settings.console_idle_seconds,
            max_seconds=settings.console_max_seconds,
        ):
            assert record is not None
            found = ConsoleSession(digest, record["csrf"], record.get("approver", ""))
        elif record is not None:
            sessions().delete(digest)  # timed out: gone for every node, not only this answer
    g.console_session = found
    return found


def check_origin() -> None:
    allowed = [runtime().config.broker.issuer, request.host_url]
    if not rules.same_origin_post(
        request.headers.get("Origin"), request.headers.get("Referer"), allowed
    ):
        raise CsrfRefused("csrf_origin")


def check_session_token(session: ConsoleSession) -> None:
    if not rules.tokens_match(session.csrf, request.form.get("csrf_token")):
        raise CsrfRefused("csrf_token")


def check_login_token() -> None:
    if not rules.login_token_ok(
        signing_key(), request.cookies.get(LOGIN_COOKIE), request.form.get("csrf_token")
    ):
        raise CsrfRefused("csrf_token")


def refusal_event(reason: str, session: ConsoleSession | None) -> dict[str, object]:
    return {
        "ts": runtime().clock.now(),
        "event": "console.refused",
        "outcome": "denied",
        "reason": reason,
        "endpoint": request.endpoint or "unknown",
        "session": session.actor if session else None,
        "client_address": client_address(),
        "request_id": request_id(),
    }


def to_login() -> Response:
    return redirect(url_for("console.login_form"), code=303)


def add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    return response
