"""Bearer-token errors and their RFC 6750 §3 renderings.

Each error carries the HTTP status, the RFC 6750 §3.1 error code and a short description that
is safe to show the caller: it may say which check failed ("expired", "audience"), never the
value a check expected. The `reason` is a stable code for logs and metrics."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class BearerError(Exception):
    """A request that carries no acceptable bearer token."""

    status_code = 401
    error: str | None = "invalid_token"
    description = "The access token is invalid."
    reason = "invalid_token"

    def __init__(self, description: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(description or self.description)
        self.description = description or self.description
        if reason:
            self.reason = reason

    def challenge_params(self) -> dict[str, str]:
        """Auth-params of the WWW-Authenticate challenge (RFC 6750 §3)."""
        params: dict[str, str] = {}
        if self.error:
            params["error"] = self.error
            params["error_description"] = self.description
        return params

    def www_authenticate(
        self, realm: str | None = None, extra: Mapping[str, str] | None = None
    ) -> str:
        """One Bearer challenge. `extra` adds auth-params the error does not set itself
        (RFC 9728 §5.1 `resource_metadata`, and `scope` on a 401)."""
        params = {"realm": realm} if realm else {}
        params.update(self.challenge_params())
        for name, value in (extra or {}).items():
            params.setdefault(name, value)
        if not params:
            return "Bearer"
        # Our descriptions are fixed ASCII strings; quote-escape anyway (RFC 7235 quoted-string).
        return "Bearer " + ", ".join(f'{k}="{_quote(v)}"' for k, v in params.items())

    def body(self) -> dict[str, Any]:
        return {"error": self.error or "missing_token", "error_description": self.description}

    def response_parts(
        self, realm: str | None = None, extra: Mapping[str, str] | None = None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, JSON body) for any framework to send."""
        payload = json.dumps(self.body()).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            ("WWW-Authenticate", self.www_authenticate(realm, extra)),
        ]
        return self.status_code, headers, payload


def _quote(value: str) -> str:
    return (
        "".join(c for c in value if c >= " " and c != "\x7f")
        .replace("\\", "\\\\")
        .replace('"', '\\"')
    )


class MissingToken(BearerError):
    """No bearer credentials at all. RFC 6750 §3.1: the challenge then carries no error code."""

    error = None
    description = "A bearer token is required."
    reason = "missing_token"


class InvalidRequest(BearerError):
    """A malformed Authorization header (RFC 6750 §3.1: 400 invalid_request)."""

    status_code = 400
    error = "invalid_request"
    description = "The Authorization header is malformed."
    reason = "invalid_request"


class InvalidToken(BearerError):
    """Malformed, wrongly signed, expired, for another audience or issuer, or revoked (401)."""


class TokenRevoked(InvalidToken):
    description = "The access token has been revoked."
    reason = "revoked"


class FeedUnavailable(InvalidToken):
    """Fail closed: the revocation feed has not synced within its grace period, so no token can
    be shown not to be revoked. Rendered as 401 invalid_token (see docs/resource-servers.md)."""

    description = "revocation feed unavailable"
    reason = "feed_unavailable"


class KeysUnavailable(InvalidToken):
    """The JWKS has never been fetched (cold cache) and the issuer cannot be reached."""

    description = "The issuer's signing keys are unavailable."
    reason = "keys_unavailable"


class InsufficientScope(BearerError):
    """A valid token without every scope the endpoint requires (RFC 6750 §3.1: 403)."""

    status_code = 403
    error = "insufficient_scope"
    description = "The access token does not carry the required scope."
    reason = "insufficient_scope"

    def __init__(self, required: tuple[str, ...], description: str | None = None) -> None:
        super().__init__(description)
        self.required = required

    def challenge_params(self) -> dict[str, str]:
        params = super().challenge_params()
        params["scope"] = " ".join(self.required)  # RFC 6750 §3: the scope needed
        return params
