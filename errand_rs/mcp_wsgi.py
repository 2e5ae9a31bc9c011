"""WSGI middleware: an MCP server on a WSGI stack protected by McpGuard
(errand_rs/mcp_guard.py). The same checks as the ASGI middleware (errand_rs/asgi.py).

    app = McpWsgiMiddleware(wsgi_app, guard)

The body is read (at most `guard.max_body_bytes`, by CONTENT_LENGTH) and handed on in a
fresh `wsgi.input`. The verified token is in `environ["errand.token"]`."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from errand_rs.mcp_guard import Answer, McpGuard

ENVIRON_KEY = "errand.token"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _headers(environ: dict[str, Any]) -> dict[str, list[str]]:
    """WSGI servers fold a repeated header into one comma-joined value. Left as one: a
    folded pair of routing headers then disagrees with the body and is refused."""
    return {
        key[5:].replace("_", "-").lower(): [value]
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }


class McpWsgiMiddleware:
    def __init__(self, app: WsgiApp, guard: McpGuard) -> None:
        self.app = app
        self.guard = guard

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ.pop(ENVIRON_KEY, None)
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        answer = self.guard.metadata_answer(method, path)
        if answer is None:
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= self.guard.max_body_bytes:
                answer = self.guard.too_large()
            else:
                body = environ["wsgi.input"].read(length) if length else b""
                environ["wsgi.input"] = io.BytesIO(body)
                outcome = self.guard.check(method, path, _headers(environ), body)
                if not isinstance(outcome, Answer):
                    environ[ENVIRON_KEY] = outcome.token
                    return self.app(environ, start_response)
                answer = outcome
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", answer.headers)
        return [b"" if method == "HEAD" else answer.body]
