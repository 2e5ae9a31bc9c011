"""An agent run against MCP servers with the official `mcp` client SDK, its tokens from Errand.

    python -m examples.mcp_server.agent --broker http://127.0.0.1:8080 \\
        --identity notes-agent --key-file agent.pem --kid agent-1 \\
        --server http://127.0.0.1:8001/mcp --server http://127.0.0.1:8002/mcp

For each server: one token (errand_client.mcp.McpTokens, resource = the server's URL),
tools listed, `read_notes` called. The task is completed when the run ends. With `--dpop` the
tokens are bound to a key made for the run and every request carries a fresh proof."""

from __future__ import annotations

import argparse
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from errand_client import AgentKey, ErrandClient
from errand_client.mcp import McpTokens, mcp_task


class ErrandAuth(httpx2.Auth):
    """Adds the task's token for one MCP server to every request the SDK sends (renewed by
    McpTokens when due: a long run never sends an expired token). With DPoP-bound tokens each
    request gets its own proof, naming its method and URL and (MCP DPoP profile) the SHA-256
    of its exact body: httpx calls this hook per request, after the body is built."""

    requires_request_body = True  # the JSON-RPC body is read before auth_flow, for the digest

    def __init__(self, tokens: McpTokens, resource: str) -> None:
        self.tokens = tokens
        self.resource = resource

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        # Blocking at most for one token request per server per token lifetime.
        body = request.content if request.method in ("POST", "PUT", "PATCH") else None
        request.headers.update(
            self.tokens.headers(
                self.resource, method=request.method, url=str(request.url), body=body
            )
        )
        yield request


def session_for(tokens: McpTokens, resource: str) -> Client:
    """An MCP client for `resource` whose HTTP requests carry the task's token for it."""
    http = httpx2.AsyncClient(auth=ErrandAuth(tokens, resource), trust_env=False)
    return Client(streamable_http_client(resource, http_client=http))


async def run(tokens: McpTokens, servers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for server in servers:
        async with session_for(tokens, server) as mcp:
            tools = await mcp.list_tools()
            notes = await mcp.call_tool("read_notes", {})
            out[server] = {
                "tools": [t.name for t in tools.tools],
                "notes": notes.structured_content,
            }
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.mcp_server.agent")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--kid", required=True)
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument(
        "--dpop", action="store_true", help="bind the tokens to a key (DPoP); a proof per call"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    key = AgentKey.from_file(
        args.identity, args.key_file, args.kid, args.broker.rstrip("/") + "/token"
    )
    client = ErrandClient(args.broker, key, grant="jwt-bearer", allow_http=True, dpop=args.dpop)
    scopes = {server: "notes:discover notes:read" for server in args.server}
    with mcp_task(client, "read-notes", purpose="read every note", scopes=scopes) as tokens:
        print(anyio.run(run, tokens, args.server))


if __name__ == "__main__":
    main()
