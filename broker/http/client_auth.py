"""Authenticating resource-server clients (client_secret_basic or client_secret_post,
RFC 6749 §2.3.1) and operators (a bearer admin credential).

Failures are audited and throttled per client address (domain/limits.py): past the limit an
address gets 429 before any credential is compared; other addresses are unaffected."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from flask import Request

from broker.domain.limits import check_auth_throttle, note_auth_failure
from broker.domain.models import Client, Config, is_safe_id
from broker.errors import InvalidClient, InvalidToken, TooManyRequests
from broker.http.context import client_address, request_id, services
from broker.metrics import AUTH_FAILURES

T = TypeVar("T")


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as err:
        raise InvalidClient(reason="bad_basic_auth") from err
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient(reason="bad_basic_auth")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _presented(request: Request, form: dict[str, Any]) -> tuple[str, str] | None:
    """The (client_id, secret) the request presents, None if it presents none."""
    header = request.headers.get("Authorization", "")
    creds = _basic_credentials(header) if header else None
    if creds is None and ("client_id" in form or "client_secret" in form):
        if header:
            raise InvalidClient("use one client authentication method", reason="multiple_auth")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if not isinstance(client_id, str) or not isinstance(secret, str):
            raise InvalidClient(reason="missing_client_secret")
        creds = (client_id, secret)
    elif creds is not None and "client_secret" in form:
        raise InvalidClient("use one client authentication method", reason="multiple_auth")
    return creds


def _verify_client(creds: tuple[str, str], config: Config) -> Client:
    client = config.clients.get(creds[0])
    digest = hashlib.sha256(creds[1].encode()).digest()
    # Compare even for an unknown client, so timing does not reveal which ids exist.
    expected = client.secret_sha256 if client else b"\0" * 32
    if not hmac.compare_digest(digest, expected) or client is None:
        raise InvalidClient(reason="bad_client_credentials")
    return client


def _throttled(kind: str, attempt: Callable[[dict[str, Any]], T]) -> T:
    """Run one authentication attempt behind the per-address throttle; audit its failure.
    `attempt` may add to the audit context (a configured client id it was presented)."""
    svc = services()
    context: dict[str, Any] = {"client_address": client_address(), "request_id": request_id()}
    try:
        check_auth_throttle(svc, kind, context)
    except TooManyRequests:
        AUTH_FAILURES.labels(kind, "throttled").inc()
        raise
    try:
        return attempt(context)
    except (InvalidClient, InvalidToken) as err:
        AUTH_FAILURES.labels(kind, "denied").inc()
        note_auth_failure(svc, kind, err.reason, context)
        raise


def authenticate_client(
    request: Request, form: dict[str, Any], config: Config, *, required: bool
) -> Client | None:
    """The client that authenticated, None if none tried (and none is required)."""
    scheme = request.headers.get("Authorization", "").partition(" ")[0].lower()
    tried = scheme == "basic" or "client_id" in form or "client_secret" in form
    if not (tried or required):
        return None  # e.g. a holder revoking its own token: not an authentication attempt

    def attempt(context: dict[str, Any]) -> Client | None:
        creds = _presented(request, form)
        if creds is None:
            raise InvalidClient("client authentication is required", reason="no_client_auth")
        if creds[0] in config.clients:
            context["client_id"] = creds[0]  # ours to name; an unknown id is caller text
        return _verify_client(creds, config)

    return _throttled("client", attempt)


def bearer_token(request: Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise InvalidToken("a bearer token is required", reason="no_bearer_token")
    return value.strip()


def operator_label(request: Request) -> str:
    """Who asked, for audit: a stable, non-secret label for the admin credential, plus the
    X-Errand-Operator name when it is a safe identifier."""
    digest = hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()[:12]
    name = request.headers.get("X-Errand-Operator", "")
    return f"admin:{digest}" + (f":{name}" if is_safe_id(name) else "")


def check_admin(request: Request, admin_token_sha256: bytes | None) -> None:
    if admin_token_sha256 is None:
        raise InvalidToken(
            "operator endpoints are disabled: no admin credential is configured",
            reason="admin_disabled",
        )

    def attempt(_: dict[str, Any]) -> None:
        _verify_admin_secret(bearer_token(request), admin_token_sha256)

    _throttled("admin", attempt)


def check_admin_secret(secret: str, admin_token_sha256: bytes, *, via: str) -> None:
    """The admin credential typed into a form (the web console's login): the same
    constant-time check, per-address throttle and audit as the bearer header. `via` names
    the door in the audit event."""

    def attempt(context: dict[str, Any]) -> None:
        context["via"] = via
        _verify_admin_secret(secret, admin_token_sha256)

    _throttled("admin", attempt)


def _verify_admin_secret(secret: str, admin_token_sha256: bytes) -> None:
    presented = hashlib.sha256(secret.encode("utf-8", "replace")).digest()
    if not hmac.compare_digest(presented, admin_token_sha256):
        raise InvalidToken("the admin credential is not valid", reason="bad_admin_token")
