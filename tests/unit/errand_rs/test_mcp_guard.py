"""McpGuard through its WSGI and ASGI middlewares: RFC 9728 metadata, 401 and 403 challenges
read back with a strict parser, audience confusion, header/body mismatch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import Client

from errand_rs import ErrandVerifier
from errand_rs.asgi import McpAsgiMiddleware
from errand_rs.mcp import HEADER_MISMATCH, McpScopes
from errand_rs.mcp_guard import McpGuard
from errand_rs.mcp_wsgi import McpWsgiMiddleware
from errand_rs.protected_resource import ProtectedResource, check_resource
from tests.support.challenges import parse_challenge

NOTES = "https://notes.acme.example/mcp"
OTHER = "https://calendar.acme.example/mcp"
SCOPES = McpScopes(
    discovery="notes:discover",
    tools={"read_notes": "notes:read", "write_note": "notes:write notes:read"},
)
METADATA_URL = "https://notes.acme.example/.well-known/oauth-protected-resource/mcp"


@pytest.fixture
def guard(published: Any) -> McpGuard:
    verifier = ErrandVerifier(published.url, NOTES)
    resource = ProtectedResource.of(
        NOTES, published.url, scopes_supported=SCOPES.scopes_supported(), resource_name="Notes"
    )
    return McpGuard(verifier, None, resource=resource, scopes=SCOPES)


@pytest.fixture
def client(guard: McpGuard) -> Client:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        token = environ["errand.token"]
        echoed = json.loads(environ["wsgi.input"].read() or b"{}")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"task": token.task_id, "echo": echoed}).encode()]

    return Client(McpWsgiMiddleware(app, guard))


def call(name: str, *, method: str = "tools/call") -> dict[str, Any]:
    params = {"name": name, "arguments": {}} if method == "tools/call" else {}
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def post(client: Client, doc: Any, token: str | None = None, **headers: str) -> Any:
    if isinstance(doc, dict) and "method" in doc:
        headers.setdefault("Mcp-Method", doc["method"])
        if doc["method"] == "tools/call":
            headers.setdefault("Mcp-Name", doc["params"]["name"])
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(
        "/mcp", data=json.dumps(doc), headers={"Content-Type": "application/json", **headers}
    )


def challenge(resp: Any) -> dict[str, str]:
    assert len(resp.headers.getlist("WWW-Authenticate")) == 1
    scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    return params


@pytest.fixture
def notes_token(mint: Callable[..., str]) -> Callable[..., str]:
    def make(
        scopes: str = "notes:discover notes:read", audiences: tuple[str, ...] = (NOTES,)
    ) -> str:
        return mint(audiences=audiences, scopes=tuple(scopes.split()))

    return make


# -- RFC 9728 metadata -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"]
)
def test_metadata_at_both_addresses(client: Client, published: Any, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_json() == {
        "resource": NOTES,
        "authorization_servers": [published.url],
        "scopes_supported": ["notes:discover", "notes:read", "notes:write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Notes",
    }


def test_metadata_path_drops_the_slash_after_the_host(published: Any) -> None:
    root = ProtectedResource.of("https://notes.acme.example/", published.url)
    assert root.metadata_url == "https://notes.acme.example/.well-known/oauth-protected-resource"
    deep = ProtectedResource.of("https://acme.example/tools/notes", published.url)
    assert deep.metadata_path == "/.well-known/oauth-protected-resource/tools/notes"


@pytest.mark.parametrize(
    "bad",
    [
        "notes.acme.example/mcp",
        "https://notes.acme.example/mcp#x",
        "https://notes.acme.example/mcp?tenant=1",
        "http://notes.acme.example/mcp",  # clear text off loopback
        "https://user:pw@notes.acme.example/mcp",
    ],
)
def test_a_resource_identifier_is_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        check_resource(bad)


def test_the_guard_refuses_a_verifier_for_another_audience(published: Any) -> None:
    resource = ProtectedResource.of(NOTES, published.url)
    with pytest.raises(ValueError):
        McpGuard(ErrandVerifier(published.url, OTHER), None, resource=resource, scopes=SCOPES)


# -- 401 ---------------------------------------------------------------------------------------
def test_no_token_is_401_pointing_at_the_metadata_with_the_scopes_needed(client: Client) -> None:
    resp = post(client, call("write_note"))
    assert resp.status_code == 401
    assert challenge(resp) == {
        "resource_metadata": METADATA_URL,
        "scope": "notes:write notes:read",
    }


def test_a_protocol_call_without_a_token_names_no_scope(client: Client) -> None:
    resp = post(client, call("", method="server/discover"))
    assert challenge(resp) == {"resource_metadata": METADATA_URL}


def test_no_token_is_401_even_with_a_bad_body(client: Client) -> None:
    """A caller without a token learns nothing about the request but where to get one."""
    resp = client.post("/mcp", data=b"garbage", headers={"Mcp-Name": "x"})
    assert resp.status_code == 401 and challenge(resp) == {"resource_metadata": METADATA_URL}


def test_audience_confusion_is_refused(client: Client, notes_token: Any) -> None:
    for audiences in ((OTHER,), (NOTES, OTHER)):
        resp = post(client, call("read_notes"), notes_token(audiences=audiences))
        assert resp.status_code == 401
        params = challenge(resp)
        assert params["error"] == "invalid_token"
        assert params["resource_metadata"] == METADATA_URL


# -- 403: one complete challenge ---------------------------------------------------------------
def test_insufficient_scope_names_every_scope_the_call_needs(
    client: Client, notes_token: Any
) -> None:
    """The token has notes:read; write_note needs notes:write AND notes:read: both are named,
    so a client that asks for exactly the challenge's scopes can make the call."""
    resp = post(client, call("write_note"), notes_token("notes:read"))
    assert resp.status_code == 403
    params = challenge(resp)
    assert params["error"] == "insufficient_scope"
    assert params["scope"].split() == ["notes:write", "notes:read"]
    assert params["resource_metadata"] == METADATA_URL
    assert resp.get_json()["error"] == "insufficient_scope"


def test_discovery_needs_its_own_scope(client: Client, notes_token: Any) -> None:
    resp = post(client, call("", method="tools/list"), notes_token("notes:read"))
    assert resp.status_code == 403 and challenge(resp)["scope"] == "notes:discover"
    ok = post(client, call("", method="tools/list"), notes_token("notes:discover"))
    assert ok.status_code == 200


def test_an_allowed_call_reaches_the_app_with_its_body(client: Client, notes_token: Any) -> None:
    resp = post(client, call("read_notes"), notes_token())
    assert resp.status_code == 200
    assert resp.get_json()["echo"]["params"]["name"] == "read_notes"


# -- header/body mismatch ------------------------------------------------------------------
def test_a_header_naming_another_tool_is_refused(client: Client, notes_token: Any) -> None:
    """Mcp-Name says read_notes (which the token may call); the body calls write_note."""
    resp = post(client, call("write_note"), notes_token(), **{"Mcp-Name": "read_notes"})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == HEADER_MISMATCH
    assert "WWW-Authenticate" not in resp.headers


def test_an_unmapped_tool_is_refused(client: Client, notes_token: Any) -> None:
    resp = post(client, call("delete_everything"), notes_token())
    assert resp.status_code == 400 and resp.get_json()["id"] == 1


def test_a_large_body_is_refused_before_any_check(client: Client, guard: McpGuard) -> None:
    guard.max_body_bytes = 100
    assert client.post("/mcp", data=b"x" * 101).status_code == 413


# -- ASGI --------------------------------------------------------------------------------------
def run_asgi(app: Any, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_asgi_middleware(guard: McpGuard, notes_token: Any) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        token = scope["state"]["errand_token"]
        await send({"type": "http.response.body", "body": token.task_id.encode() + b" " + body})

    app = McpAsgiMiddleware(inner, guard)
    raw = json.dumps(call("read_notes")).encode()
    status, headers, out = run_asgi(
        app, "GET", "/.well-known/oauth-protected-resource/mcp", b"", {}
    )
    assert status == 200 and json.loads(out)["resource"] == NOTES
    status, headers, _ = run_asgi(app, "POST", "/mcp", raw, {"Mcp-Name": "read_notes"})
    assert status == 401 and parse_challenge(headers[b"www-authenticate"].decode())[1] == {
        "resource_metadata": METADATA_URL,
        "scope": "notes:read",
    }
    auth = {"Authorization": f"Bearer {notes_token()}", "Mcp-Name": "read_notes"}
    status, _, out = run_asgi(app, "POST", "/mcp", raw, auth)
    assert status == 200 and out.endswith(raw)
    status, _, out = run_asgi(app, "POST", "/mcp", raw, {**auth, "Mcp-Name": "write_note"})
    assert status == 400 and json.loads(out)["error"]["code"] == HEADER_MISMATCH


def test_asgi_refuses_two_authorization_headers_and_admits_a_get(
    guard: McpGuard, notes_token: Any
) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = McpAsgiMiddleware(inner, guard)
    token = notes_token("notes:read")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    two = [(b"authorization", f"Bearer {token}".encode())] * 2
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": two}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401
    sent.clear()
    # A GET (server stream) needs a valid token for this server, and no scope.
    scope = {"type": "http", "method": "GET", "path": "/mcp", "headers": two[:1]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 204
