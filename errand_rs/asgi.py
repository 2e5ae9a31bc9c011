"""ASGI middleware: an MCP server (the official `mcp` SDK, or any ASGI app) protected by
McpGuard (errand_rs/mcp_guard.py).

    guard = McpGuard(verifier, feed, resource=ProtectedResource.of(url, issuer,
                     scopes_supported=scopes.scopes_supported()), scopes=scopes)
    app = McpAsgiMiddleware(mcp_server.streamable_http_app(), guard)

The body is read (at most `guard.max_body_bytes`) before the app runs, checked, then handed
to the app unchanged. Token verification runs in a worker thread (`asyncio.to_thread`): a
cold JWKS cache fetches keys with blocking I/O, which must not stall the event loop. The
verified token is in `scope["state"]["errand_token"]` (Starlette: `request.state.errand_token`)
and `scope["errand.token"]`. Needs an asyncio server (uvicorn, hypercorn, granian)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from errand_rs.mcp_guard import Admitted, Answer, McpGuard

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = "errand.token"


async def _send_answer(send: Send, answer: Answer, *, head: bool = False) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


def _headers(scope: Scope) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in scope.get("headers", ()):
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


class McpAsgiMiddleware:
    def __init__(self, app: AsgiApp, guard: McpGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # MCP has no WebSocket transport: nothing else reaches the app unchecked.
            await send({"type": "websocket.close", "code": 1008})
            return
        scope.pop(SCOPE_KEY, None)
        method, path = scope["method"], scope["path"]
        metadata = self.guard.metadata_answer(method, path)
        if metadata is not None:
            await _send_answer(send, metadata, head=method == "HEAD")
            return
        body, more = await self._read_body(receive)
        if more:
            await _send_answer(send, self.guard.too_large())
            return
        outcome = await asyncio.to_thread(self.guard.check, method, path, _headers(scope), body)
        if isinstance(outcome, Answer):
            await _send_answer(send, outcome)
            return
        assert isinstance(outcome, Admitted)
        scope[SCOPE_KEY] = outcome.token
        scope.setdefault("state", {})["errand_token"] = outcome.token
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """(body, True if it went past the limit)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.guard.max_body_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that yields the body already read, then defers to the server's (so the
    app still hears of a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


__all__ = ["SCOPE_KEY", "McpAsgiMiddleware"]
