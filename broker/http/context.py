"""Per-request helpers shared by the views."""

from __future__ import annotations

import re
import secrets

from flask import current_app, g, request

from broker.domain.ports import Services

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def services() -> Services:
    svc: Services = current_app.extensions["errand"]
    return svc


def request_id() -> str:
    rid = g.get("request_id")
    if rid is None:
        supplied = request.headers.get("X-Request-Id", "")
        rid = supplied if _REQUEST_ID.fullmatch(supplied) else secrets.token_hex(8)
        g.request_id = rid
    return str(rid)


def client_address() -> str:
    return str(request.remote_addr or "")
