"""Per-request helpers shared by the views."""

from __future__ import annotations

import re
import secrets

from flask import current_app, g, request

from broker.domain.ports import Services
from broker.http.client_address import FORWARDED, ProxyTrust, address_key
from broker.runtime import Runtime

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
    """The caller as the per-address limit and the audit see it: the TCP peer, or behind a
    trusted proxy the address it forwarded (broker/http/client_address.py); IPv6 per /64.
    The one source for every use in a request, computed once."""
    found = g.get("client_address")
    if found is None:
        trust = proxy_trust()
        header = request.headers.get(
            "Forwarded" if trust.header == FORWARDED else "X-Forwarded-For"
        )
        found = address_key(str(request.remote_addr or ""), header, trust)
        g.client_address = found
    return str(found)


def proxy_trust() -> ProxyTrust:
    """From the settings the process started with (its Runtime); Services built some other
    way carry none, and then nobody is trusted."""
    svc = services()
    if not isinstance(svc, Runtime):
        return ProxyTrust()
    settings = svc.settings
    return ProxyTrust(
        networks=settings.trusted_proxies,
        hops=settings.trusted_proxy_hops,
        header=settings.trusted_proxy_header,
    )
