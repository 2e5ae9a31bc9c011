"""Story mcp: Errand as the authorization server of two MCP servers.

A real broker (gunicorn + RQ worker) and two example notes MCP servers (examples/mcp_server:
the official `mcp` SDK over streamable HTTP, behind errand_rs, following the revocation
feed), each on its own loopback port. An agent with its own key runs one task against both
through the official `mcp` client SDK; raw HTTP where a test needs the exact status and
challenge:

- discovery from the 401: resource_metadata -> RFC 9728 metadata -> the broker's RFC 8414
  metadata, which lists both grants;
- one token per server for the task (jwt-bearer, aud = the token endpoint; resource = the
  server), reused; tools listed, a read call ok;
- a write tool outside the token's scopes: 403 with one complete insufficient_scope challenge;
- server A's token at server B: refused (audience confusion);
- Mcp-Name naming a permitted tool over a body calling another: refused;
- the run ends, the task completes, both servers refuse its tokens."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests

from broker.dev.issuer import load_or_create_key
from errand_client import AgentKey, ErrandClient
from errand_client.mcp import McpTokens, mcp_task
from examples.mcp_server.agent import session_for
from tests.support.challenges import parse_challenge
from tests.support.platforms import jwks_of
from tests.support.redis import RedisDbs
from tests.support.stack import CLIENT_ID, LOCAL, ROOT, TunedStack, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AGENT = "notes-agent"
READ = "notes:discover notes:read"
WRITE = "notes:discover notes:read notes:write"


@dataclass
class McpWorld:
    stack: TunedStack
    servers: dict[str, str]  # name -> resource URL
    agent_key: Path
    kid: str

    def client(self) -> ErrandClient:
        key = AgentKey.from_file(AGENT, self.agent_key, self.kid, self.stack.url + "/token")
        return ErrandClient(self.stack.url, key, grant="jwt-bearer", allow_http=True)


def _identity(jwks: dict[str, Any], resources: list[str]) -> dict[str, Any]:
    return {
        "id": AGENT,
        "type": "agent",
        "owner": "notes-team",
        "purpose": "Keep the team's notes",
        "keys": {"jwks": jwks},
        "allow": {
            "audiences": resources,
            "scopes": ["notes:discover", "notes:read", "notes:write"],
        },
    }


def _start_server(world_dir: Path, stack: TunedStack, name: str, port: int) -> Any:
    log = open(world_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.mcp_server",
            "--issuer",
            stack.url,
            "--port",
            str(port),
            "--name",
            name,
            "--feed-client-id",
            CLIENT_ID,
            "--feed-secret-file",
            str(stack.secret_file),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc


def _wait_ready(url: str, proc: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MCP server at {url} exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if LOCAL.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the MCP server at {url} did not start")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs) -> Iterator[McpWorld]:
    workdir = tmp_path_factory.mktemp("mcp")
    agent_key = workdir / "agent.pem"
    key = load_or_create_key(agent_key)
    ports = {"notes-a": free_port(), "notes-b": free_port()}
    servers = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
    # The stack's own dev issuer is not used: the agent signs with its registered key.
    stack = TunedStack(workdir / "stack", redis_dbs.url("e2e-mcp"), "http://127.0.0.1:9")
    stack.edit_config(
        lambda doc: doc["identities"].append(_identity(jwks_of(key), list(servers.values())))
    )
    procs: list[Any] = []
    stack.start()
    try:
        for name, port in ports.items():
            procs.append(_start_server(workdir, stack, name, port))
        deadline = time.monotonic() + 30
        for proc, url in zip(procs, servers.values(), strict=True):
            metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
            _wait_ready(metadata, proc, deadline)
        yield McpWorld(stack, servers, agent_key, key.kid)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        stack.stop()
        redis_dbs.flush("e2e-mcp")


def rpc(method: str, name: str | None = None, **arguments: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments} if name else {}
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def post(url: str, doc: dict[str, Any], token: str | None = None, **headers: str) -> Any:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Mcp-Method": doc["method"],
        **headers,
    }
    if doc["method"] == "tools/call":
        headers.setdefault("Mcp-Name", doc["params"]["name"])
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return LOCAL.post(url, data=json.dumps(doc), headers=headers, timeout=10)


def challenge(resp: Any) -> dict[str, str]:
    scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    return params


def test_metadata_discovery_from_the_401(world: McpWorld) -> None:
    a = world.servers["notes-a"]
    resp = post(a, rpc("tools/list"))
    assert resp.status_code == 401
    params = challenge(resp)
    assert params["scope"] == "notes:discover"
    metadata = LOCAL.get(params["resource_metadata"], timeout=5).json()
    assert metadata["resource"] == a
    assert metadata["authorization_servers"] == [world.stack.url]
    assert metadata["scopes_supported"] == ["notes:discover", "notes:read", "notes:write"]
    assert metadata["bearer_methods_supported"] == ["header"]
    server = metadata["authorization_servers"][0]
    broker = LOCAL.get(server + "/.well-known/oauth-authorization-server", timeout=5).json()
    assert broker["issuer"] == server and broker["token_endpoint"] == server + "/token"
    assert {
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    } <= set(broker["grant_types_supported"])


async def _agent_run(tokens: McpTokens, a: str, b: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with session_for(tokens, a) as mcp:
        out["tools_a"] = sorted(t.name for t in (await mcp.list_tools()).tools)
        wrote = await mcp.call_tool("write_note", {"text": "ship the MCP story"})
        out["wrote"] = wrote.structured_content
        out["read_a"] = (await mcp.call_tool("read_notes", {})).structured_content
    async with session_for(tokens, b) as mcp:
        out["tools_b"] = sorted(t.name for t in (await mcp.list_tools()).tools)
        out["read_b"] = (await mcp.call_tool("read_notes", {})).structured_content
    return out


def test_an_agent_run_against_two_mcp_servers(world: McpWorld) -> None:
    a, b = world.servers["notes-a"], world.servers["notes-b"]
    scopes = {a: WRITE, b: READ}
    with mcp_task(world.client(), "notes", purpose="keep notes", scopes=scopes) as tokens:
        out = anyio.run(_agent_run, tokens, a, b)
        assert out["tools_a"] == out["tools_b"] == ["read_notes", "write_note"]
        assert out["wrote"]["by"] == AGENT and out["wrote"]["task"] == tokens.task_id
        assert out["read_a"]["result"][0]["text"] == "ship the MCP story"
        assert out["read_b"] == {"result": []}  # two servers, two stores
        assert tokens.exchanges == 2  # one token per server, reused by every request

        token_a, token_b = tokens.access_token(a), tokens.access_token(b)
        # A write tool outside B's token's scopes: one challenge naming what the call needs.
        resp = post(b, rpc("tools/call", "write_note", text="x"), token_b)
        assert resp.status_code == 403
        params = challenge(resp)  # strict: a second challenge would not parse
        assert params["error"] == "insufficient_scope"
        assert params["scope"] == "notes:write"
        assert params["resource_metadata"] == b.replace(
            "/mcp", "/.well-known/oauth-protected-resource/mcp"
        )
        # Audience confusion: A's token (which may write) at B.
        resp = post(b, rpc("tools/call", "read_notes"), token_a)
        assert resp.status_code == 401 and challenge(resp)["error"] == "invalid_token"
        # The header names a tool B's token may call; the body calls another.
        resp = post(
            b, rpc("tools/call", "write_note", text="x"), token_b, **{"Mcp-Name": "read_notes"}
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020
        assert post(b, rpc("tools/call", "read_notes"), token_b).status_code == 200

    # The run is over: the task is complete, and both servers learn it from the feed.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        statuses = {post(a, rpc("tools/list"), token_a).status_code}
        statuses.add(post(b, rpc("tools/list"), token_b).status_code)
        if statuses == {401}:
            break
        time.sleep(0.1)
    assert statuses == {401}
