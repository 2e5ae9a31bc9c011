"""A notes MCP server (official `mcp` SDK, streamable HTTP) protected by errand_rs.

Errand is its authorization server: it accepts only Errand tokens whose audience is exactly
its own URL, and each tool needs its own scope:

    tools/list, prompts/list, ...   notes:discover
    read_notes                      notes:read
    write_note                      notes:write
    publish_note                    notes:publish   (only with an upstream configured)

`publish_note` calls an upstream API for the agent. It never forwards the agent's token
(no passthrough): it exchanges it at Errand for a token addressed to the upstream, narrowed
to one scope, with the server's own identity as the actor (examples/mcp_server/upstream.py).

With `dpop` set it also accepts DPoP-bound tokens (RFC 9449), each request with a fresh proof
whose `content_digest` binds the exact JSON-RPC body; `require_dpop` refuses bearer tokens.

Run it: see examples/mcp_server/README.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from errand_rs import DpopChecker, ErrandVerifier, RevocationFeed
from errand_rs.asgi import McpAsgiMiddleware
from errand_rs.mcp_guard import McpGuard
from errand_rs.protected_resource import ProtectedResource
from examples.mcp_server.scopes import notes_scopes
from examples.mcp_server.upstream import Upstream


@dataclass
class NotesConfig:
    issuer: str  # the Errand broker's URL, exactly as in its tokens' `iss`
    resource: str  # this server's URL, e.g. http://127.0.0.1:8001/mcp: the token audience
    name: str = "notes"
    feed: RevocationFeed | None = None  # None: revocation is seen only at expiry
    upstream: Upstream | None = None  # where publish_note sends notes
    dpop: DpopChecker | None = None  # accept DPoP-bound tokens (require_dpop: only those)
    notes: list[dict[str, Any]] = field(default_factory=list)


def _caller(ctx: Context) -> tuple[Any, str]:
    """(the verified token, the raw bearer token) of the request being served."""
    request = ctx.request_context.request
    assert request is not None, "streamable HTTP always has a request"
    token = request.state.errand_token
    _, _, raw = request.headers["authorization"].partition(" ")
    return token, raw.strip()


def build_server(config: NotesConfig) -> MCPServer:
    server = MCPServer(config.name, instructions="Read and write short notes.")

    @server.tool()
    def read_notes(ctx: Context) -> list[dict[str, Any]]:
        """Every note on this server."""
        return list(config.notes)

    @server.tool()
    def write_note(text: str, ctx: Context) -> dict[str, Any]:
        """Add a note; the author is the calling workload and the task it runs."""
        token, _ = _caller(ctx)
        note = {"id": len(config.notes) + 1, "text": text[:2000], "by": token.subject}
        note["task"] = token.task_id
        config.notes.append(note)
        return note

    if config.upstream is not None:
        upstream = config.upstream

        @server.tool()
        def publish_note(note_id: int, ctx: Context) -> dict[str, Any]:
            """Send one note to the upstream archive, for the calling agent."""
            _, agent_token = _caller(ctx)
            note = next((n for n in config.notes if n["id"] == note_id), None)
            if note is None:
                raise ValueError("no such note")
            return upstream.publish(agent_token, note)

    return server


def build_app(config: NotesConfig) -> Any:
    """The ASGI app: the MCP server behind errand_rs's guard."""
    scopes = notes_scopes(with_upstream=config.upstream is not None)
    resource = ProtectedResource.of(
        config.resource,
        config.issuer,
        scopes_supported=scopes.scopes_supported(),
        resource_name=config.name,
    )
    guard = McpGuard(
        ErrandVerifier(config.issuer, config.resource),
        config.feed,
        resource=resource,
        scopes=scopes,
        dpop=config.dpop,
    )
    mcp_app = build_server(config).streamable_http_app(stateless_http=True, json_response=True)
    return McpAsgiMiddleware(mcp_app, guard)
