"""The web console under /console (docs/console.md): server-rendered pages for operators,
behind the admin credential and a session cookie.

    blueprint.py  the Blueprint, the gate before every request, headers and error pages
    guard.py      cookies, sessions, CSRF and origin checks, security headers (Flask side)
    session.py    the rules for those, as plain functions (cookie HMAC, timeouts, tokens)
    views.py      sign-in/out and the pages; actions.py  the revocations (POST)
    events.py     audit events as rows: generic, nothing secret
    templates/console/  Jinja templates (autoescaped) and the stylesheet"""

from __future__ import annotations

from broker.http.console import actions, views
from broker.http.console.blueprint import bp

__all__ = ["actions", "bp", "views"]
