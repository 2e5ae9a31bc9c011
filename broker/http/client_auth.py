"""Authenticating resource-server clients (client_secret_basic or client_secret_post,
RFC 6749 §2.3.1) and operators (a bearer admin credential)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any
from urllib.parse import unquote

from flask import Request

from broker.domain.models import Client, Config
from broker.errors import InvalidClient, InvalidToken


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


def authenticate_client(
    request: Request, form: dict[str, Any], config: Config, *, required: bool
) -> Client | None:
    """The client that authenticated, None if none tried (and none is required)."""
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
    if creds is None:
        if required:
            raise InvalidClient("client authentication is required", reason="no_client_auth")
        return None
    client = config.clients.get(creds[0])
    digest = hashlib.sha256(creds[1].encode()).digest()
    # Compare even for an unknown client, so timing does not reveal which ids exist.
    expected = client.secret_sha256 if client else b"\0" * 32
    if not hmac.compare_digest(digest, expected) or client is None:
        raise InvalidClient(reason="bad_client_credentials")
    return client


def bearer_token(request: Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise InvalidToken("a bearer token is required", reason="no_bearer_token")
    return value.strip()


def check_admin(request: Request, admin_token_sha256: bytes | None) -> None:
    if admin_token_sha256 is None:
        raise InvalidToken(
            "operator endpoints are disabled: no admin credential is configured",
            reason="admin_disabled",
        )
    presented = hashlib.sha256(bearer_token(request).encode()).digest()
    if not hmac.compare_digest(presented, admin_token_sha256):
        raise InvalidToken("the admin credential is not valid", reason="bad_admin_token")
