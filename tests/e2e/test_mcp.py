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
- the run ends, the task completes, both servers refuse its tokens;
- no passthrough: server A's `publish_note` exchanges the agent's token (subject) with its
  own identity (actor) for a token addressed to the upstream archive, narrowed to one scope;
  the archive sees `act` and never the agent's token, and the hop dies with the task;
- DPoP: a third server (notes-c) requires DPoP-bound tokens; an agent run with tokens bound
  to its key (a fresh proof per request, binding the JSON-RPC body) works, and the same
  token without the key is refused, however it is sent."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from werkzeug.serving import make_server

from broker.dev.issuer import load_or_create_key
from errand_client import AgentKey, ErrandClient
from errand_client.dpop import DpopKey
from errand_client.mcp import McpTokens, mcp_task
from errand_rs import ErrandMiddleware, ErrandVerifier
from examples.mcp_server.agent import session_for
from tests.support.challenges import parse_challenge
from tests.support.platforms import jwks_of
from tests.support.redis import RedisDbs
from tests.support.stack import CLIENT_ID, LOCAL, ROOT, TunedStack, free_port, introspect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AGENT = "notes-agent"
SERVER_A = "notes-server-a"  # server A's own identity: the actor of its upstream calls
READ = "notes:discover notes:read"
WRITE = "notes:discover notes:read notes:write"
PUBLISH = "notes:discover notes:read notes:write notes:publish archive:write"


class Archive:
    """The upstream API: a WSGI app behind errand_rs's middleware (audience = its own URL,
    scope archive:write), on a loopback thread. It records the claims of what it accepted."""

    def __init__(self, issuer: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/notes"
        self.accepted: list[dict[str, Any]] = []
        self.raw_tokens: list[str] = []
        verifier = ErrandVerifier(issuer, self.url)
        app = ErrandMiddleware(self._app, verifier, None, required_scopes="archive:write")
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.accepted.append(dict(environ["errand.token"].claims))
        self.raw_tokens.append(environ["HTTP_AUTHORIZATION"].partition(" ")[2])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"archived": True}).encode()]

    def start(self) -> Archive:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class McpWorld:
    stack: TunedStack
    servers: dict[str, str]  # name -> resource URL
    agent_key: Path
    kid: str
    archive: Archive

    def client(self, *, dpop: bool = False) -> ErrandClient:
        key = AgentKey.from_file(AGENT, self.agent_key, self.kid, self.stack.url + "/token")
        return ErrandClient(self.stack.url, key, grant="jwt-bearer", allow_http=True, dpop=dpop)


def _identities(
    agent_jwks: dict[str, Any], server_jwks: dict[str, Any], servers: dict[str, str], archive: str
) -> list[dict[str, Any]]:
    agent = {
        "id": AGENT,
        "type": "agent",
        "owner": "notes-team",
        "purpose": "Keep the team's notes",
        "keys": {"jwks": agent_jwks},
        "allow": {
            "audiences": list(servers.values()),  # never the archive itself
            "scopes": [
                *("notes:discover", "notes:read", "notes:write", "notes:publish"),
                "archive:write",
            ],
        },
    }
    server_a = {
        "id": SERVER_A,
        "type": "service",
        "owner": "notes-team",
        "purpose": "The notes MCP server A, calling the archive for agents",
        "keys": {"jwks": server_jwks},
        "allow": {"audiences": [archive], "scopes": ["archive:write", "archive:delete"]},
        "delegation": {"act_for": [AGENT], "serves": [servers["notes-a"]]},
    }
    return [agent, server_a]


def _start_server(
    world_dir: Path, stack: TunedStack, name: str, port: int, extra: list[str]
) -> Any:
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
            *extra,
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
    agent_key, server_key_file = workdir / "agent.pem", workdir / "server-a.pem"
    key, server_key = load_or_create_key(agent_key), load_or_create_key(server_key_file)
    ports = {"notes-a": free_port(), "notes-b": free_port(), "notes-c": free_port()}
    servers = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
    # The stack's own dev issuer is not used: the agent signs with its registered key.
    stack = TunedStack(workdir / "stack", redis_dbs.url("e2e-mcp"), "http://127.0.0.1:9")
    archive = Archive(stack.url)
    stack.edit_config(
        lambda doc: doc["identities"].extend(
            _identities(jwks_of(key), jwks_of(server_key), servers, archive.url)
        )
    )
    upstream = {
        "notes-a": [
            *("--upstream-url", archive.url, "--identity", SERVER_A),
            *("--key-file", str(server_key_file), "--kid", server_key.kid),
        ],
        "notes-b": [],
        "notes-c": ["--dpop", "require"],
    }
    procs: list[Any] = []
    stack.start()
    archive.start()
    try:
        for name, port in ports.items():
            procs.append(_start_server(workdir, stack, name, port, upstream[name]))
        deadline = time.monotonic() + 30
        for proc, url in zip(procs, servers.values(), strict=True):
            metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
            _wait_ready(metadata, proc, deadline)
        yield McpWorld(stack, servers, agent_key, key.kid, archive)
    finally:
        archive.stop()
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
    assert metadata["scopes_supported"] == [
        "notes:discover",
        "notes:read",
        "notes:write",
        "notes:publish",  # A calls the archive for agents (publish_note)
    ]
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
        assert out["tools_a"] == ["publish_note", "read_notes", "write_note"]
        assert out["tools_b"] == ["read_notes", "write_note"]
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


async def _publish(tokens: McpTokens, a: str) -> dict[str, Any]:
    async with session_for(tokens, a) as mcp:
        wrote = await mcp.call_tool("write_note", {"text": "archive me"})
        assert wrote.structured_content is not None
        published = await mcp.call_tool("publish_note", {"note_id": wrote.structured_content["id"]})
        return dict(published.structured_content or {})


def test_no_passthrough_the_upstream_call_goes_through_a_narrowed_exchanged_token(
    world: McpWorld,
) -> None:
    a, archive = world.servers["notes-a"], world.archive
    client = world.client()
    with mcp_task(client, "publish", purpose="archive a note", scopes={a: PUBLISH}) as tokens:
        assert anyio.run(_publish, tokens, a) == {"archived": True}
        agent_token = tokens.access_token(a)
    # The archive never saw the agent's token: it saw one addressed to itself, for the agent,
    # with server A as the actor, one scope, in the agent's task.
    assert agent_token not in archive.raw_tokens
    claims = archive.accepted[-1]
    assert claims["aud"] == archive.url
    assert claims["sub"] == AGENT and claims["act"] == {"sub": SERVER_A}
    assert claims["scope"] == "archive:write"
    assert claims["task_id"] == tokens.task_id
    # The agent may not ask for the archive itself: only through the server that serves it.
    with pytest.raises(Exception, match="invalid_target"):
        client.exchange(resources=[archive.url], scopes="archive:write", task_id="t-x", purpose="p")
    # The task ended with the run: the exchanged hop is dead too.
    hop = archive.raw_tokens[-1]
    assert introspect(world.stack, hop).json() == {"active": False}


async def _dpop_run(tokens: McpTokens, c: str) -> dict[str, Any]:
    async with session_for(tokens, c) as mcp:  # ErrandAuth: a fresh proof per request
        tools = sorted(t.name for t in (await mcp.list_tools()).tools)
        wrote = await mcp.call_tool("write_note", {"text": "bound to a key"})
        read = await mcp.call_tool("read_notes", {})
        return {"tools": tools, "wrote": wrote.structured_content, "read": read.structured_content}


def test_dpop_bound_tokens_at_a_server_that_requires_them(world: McpWorld) -> None:
    c = world.servers["notes-c"]
    metadata = LOCAL.get(c.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"), timeout=5)
    assert metadata.json()["dpop_bound_access_tokens_required"] is True
    client = world.client(dpop=True)
    assert client.dpop_key is not None
    with mcp_task(client, "dpop", purpose="notes with a bound token", scopes={c: WRITE}) as tokens:
        out = anyio.run(_dpop_run, tokens, c)
        assert out["wrote"]["by"] == AGENT and out["read"]["result"][0]["text"] == "bound to a key"
        assert tokens.token(c).token_type == "DPoP" and tokens.exchanges == 1
        stolen = tokens.access_token(c)
        assert introspect(world.stack, stolen).json()["cnf"] == {"jkt": client.dpop_key.jkt}

        doc = rpc("tools/call", "read_notes")
        body = json.dumps(doc).encode()
        routing = {"Mcp-Method": "tools/call", "Mcp-Name": "read_notes"}

        def send(headers: dict[str, str], data: bytes = body) -> Any:
            return LOCAL.post(
                c,
                data=data,
                headers={"Content-Type": "application/json", "Accept": "application/json, "
                         "text/event-stream", **routing, **headers},
                timeout=10,
            )  # fmt: skip

        # The key holder, raw: one proof, once.
        own = client.dpop_key.headers(stolen, "POST", c, body=body)
        assert send(own).status_code == 200
        replayed = send(own)
        assert replayed.status_code == 401 and replayed.json()["error"] == "invalid_dpop_proof"
        # The stolen token without the key: as Bearer, with no proof, with the thief's key.
        thief = DpopKey.generate()
        for headers in (
            {"Authorization": f"Bearer {stolen}"},
            {"Authorization": f"DPoP {stolen}"},
            thief.headers(stolen, "POST", c, body=body),
        ):
            resp = send(headers)
            assert resp.status_code == 401, headers
            scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
            assert scheme == "dpop"  # required: no Bearer alternative
            assert params["resource_metadata"] == metadata.url and params["scope"] == "notes:read"
        # A body changed after signing: the proof's content_digest names the old one.
        signed = client.dpop_key.headers(stolen, "POST", c, body=body)
        other = json.dumps(rpc("tools/call", "read_notes", page=2)).encode()
        signed.pop("Content-Digest")
        assert send(signed, other).status_code == 401
    # Leaving the block completed the task with the bound token, signed with the client's
    # key (the broker refuses it as Bearer): the token is dead.
    assert introspect(world.stack, stolen).json()["active"] is False
