"""McpGuard with DPoP-bound tokens (RFC 9449 §7 and the MCP DPoP profile): a proof per
request bound to the method, this server's configured URL, the token, the key and the exact
JSON-RPC body; challenges in the DPoP scheme that still name resource_metadata and every
scope the call needs; a stolen token without the key is refused however it is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import Client

from errand_client.dpop import content_digest
from errand_rs import DpopChecker, ErrandVerifier
from errand_rs.asgi import McpAsgiMiddleware
from errand_rs.mcp import McpScopes
from errand_rs.mcp_guard import McpGuard
from errand_rs.mcp_wsgi import McpWsgiMiddleware
from errand_rs.protected_resource import ProtectedResource
from tests.support.challenges import parse_challenge
from tests.support.dpop import DpopKey

NOTES = "https://notes.acme.example/mcp"
METADATA_URL = "https://notes.acme.example/.well-known/oauth-protected-resource/mcp"
SCOPES = McpScopes(
    discovery="notes:discover",
    tools={"read_notes": "notes:read", "write_note": "notes:write notes:read"},
)


def run_asgi(app: Any, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send_(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    asyncio.run(
        app({"type": "http", "method": method, "path": path, "headers": raw}, receive, send_)
    )
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def make_guard(published: Any, checker: DpopChecker | None) -> McpGuard:
    resource = ProtectedResource.of(
        NOTES, published.url, scopes_supported=SCOPES.scopes_supported()
    )
    return McpGuard(
        ErrandVerifier(published.url, NOTES), None, resource=resource, scopes=SCOPES, dpop=checker
    )


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    token = environ["errand.token"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [
        json.dumps({"task": token.task_id, "body": environ["wsgi.input"].read().decode()}).encode()
    ]


@pytest.fixture
def key() -> DpopKey:
    return DpopKey.generate()


@pytest.fixture
def bound(mint: Callable[..., str], key: DpopKey) -> Callable[..., str]:
    def make(scopes: str = "notes:discover notes:read") -> str:
        return mint(audiences=(NOTES,), scopes=tuple(scopes.split()), dpop_jkt=key.jkt)

    return make


@pytest.fixture
def client(published: Any) -> Client:
    return Client(McpWsgiMiddleware(echo, make_guard(published, DpopChecker())))


def body_of(tool: str, **arguments: Any) -> bytes:
    doc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    doc["params"] = {"name": tool, "arguments": arguments}
    return json.dumps(doc).encode()


def send(client: Client, tool: str, body: bytes, headers: dict[str, str]) -> Any:
    routing = {"Mcp-Method": "tools/call", "Mcp-Name": tool, "Content-Type": "application/json"}
    return client.post("/mcp", data=body, headers={**routing, **headers})


def challenges(resp: Any) -> dict[str, dict[str, str]]:
    return dict(parse_challenge(v) for v in resp.headers.getlist("WWW-Authenticate"))


def test_a_bound_token_with_its_proof_over_the_exact_body(
    client: Client, bound: Any, key: DpopKey
) -> None:
    token, body = bound(), body_of("read_notes")
    resp = send(client, "read_notes", body, key.headers(token, "POST", NOTES, body=body))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["body"] == body.decode()
    # The same proof again: replayed.
    headers = key.headers(token, "POST", NOTES, body=body)
    assert send(client, "read_notes", body, headers).status_code == 200
    resp = send(client, "read_notes", body, headers)
    assert resp.status_code == 401
    assert challenges(resp)["dpop"]["error"] == "invalid_dpop_proof"


def test_a_body_changed_after_signing_is_refused(client: Client, bound: Any, key: DpopKey) -> None:
    token = bound("notes:read notes:write")
    signed = body_of("write_note", text="hello")
    tampered = body_of("write_note", text="rm -rf /")
    headers = key.headers(token, "POST", NOTES, body=signed)
    headers.pop("Content-Digest")
    resp = send(client, "write_note", tampered, headers)
    assert resp.status_code == 401
    dpop = challenges(resp)["dpop"]
    assert dpop["error"] == "invalid_dpop_proof" and "content_digest" in dpop["error_description"]
    # The header recomputed for the new body does not help: the proof still names the old one.
    resp = send(
        client, "write_note", tampered, {**headers, "Content-Digest": content_digest(tampered)}
    )
    assert resp.status_code == 401
    # Untouched, the same request (a fresh proof) goes through.
    resp = send(client, "write_note", signed, key.headers(token, "POST", NOTES, body=signed))
    assert resp.status_code == 200


def test_a_stolen_token_without_the_key_is_refused(client: Client, bound: Any) -> None:
    token, body = bound(), body_of("read_notes")
    thief = DpopKey.generate()
    for headers in (
        {"Authorization": f"Bearer {token}"},  # as a bearer token
        {"Authorization": f"DPoP {token}"},  # no proof
        thief.headers(token, "POST", NOTES, body=body),  # the thief's own key
    ):
        resp = send(client, "read_notes", body, headers)
        assert resp.status_code == 401, headers
        found = challenges(resp)
        # Every challenge still says where the metadata is and what the call needs.
        for params in found.values():
            assert params["resource_metadata"] == METADATA_URL
            assert params["scope"] == "notes:read"
        assert "es256" in found["dpop"]["algs"].lower()


def test_htu_is_this_servers_configured_url_not_the_host_header(
    client: Client, bound: Any, key: DpopKey
) -> None:
    token, body = bound(), body_of("read_notes")
    # The test client's Host is localhost: a proof naming it is for another server.
    resp = send(
        client, "read_notes", body, key.headers(token, "POST", "http://localhost/mcp", body=body)
    )
    assert resp.status_code == 401
    resp = send(client, "read_notes", body, key.headers(token, "GET", NOTES, body=body))
    assert resp.status_code == 401


def test_insufficient_scope_after_the_proof_names_every_scope(
    client: Client, bound: Any, key: DpopKey
) -> None:
    token, body = bound("notes:read"), body_of("write_note", text="x")
    resp = send(client, "write_note", body, key.headers(token, "POST", NOTES, body=body))
    assert resp.status_code == 403
    found = challenges(resp)
    assert found["dpop"]["error"] == "insufficient_scope"
    assert found["dpop"]["scope"] == "notes:write notes:read"  # all it needs, not the missing
    assert found["dpop"]["resource_metadata"] == METADATA_URL
    assert found["bearer"] == {"resource_metadata": METADATA_URL, "scope": "notes:write notes:read"}


def test_without_a_checker_a_bound_token_is_refused(
    published: Any, bound: Any, key: DpopKey
) -> None:
    plain = Client(McpWsgiMiddleware(echo, make_guard(published, None)))
    token, body = bound(), body_of("read_notes")
    for headers in (
        {"Authorization": f"Bearer {token}"},
        key.headers(token, "POST", NOTES, body=body),
    ):
        assert send(plain, "read_notes", body, headers).status_code == 401


def test_require_dpop(published: Any, mint: Callable[..., str], bound: Any, key: DpopKey) -> None:
    guard = make_guard(published, DpopChecker(require_dpop=True, require_content_digest=True))
    strict = Client(McpWsgiMiddleware(echo, guard))
    meta = strict.get("/.well-known/oauth-protected-resource/mcp").get_json()
    assert meta["dpop_bound_access_tokens_required"] is True
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    body = body_of("read_notes")
    plain = mint(audiences=(NOTES,), scopes=("notes:read",))
    resp = send(strict, "read_notes", body, {"Authorization": f"Bearer {plain}"})
    assert resp.status_code == 401
    assert list(challenges(resp)) == ["dpop"]  # no Bearer alternative offered
    assert challenges(resp)["dpop"]["resource_metadata"] == METADATA_URL
    token = bound()
    no_digest = key.headers(token, "POST", NOTES)  # a proof that binds no body
    assert send(strict, "read_notes", body, no_digest).status_code == 401
    ok = key.headers(token, "POST", NOTES, body=body)
    assert send(strict, "read_notes", body, ok).status_code == 200


def test_asgi_with_dpop(published: Any, bound: Any, key: DpopKey) -> None:
    async def inner(scope: Any, receive: Any, send_: Any) -> None:
        got = (await receive())["body"]
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": got})

    app = McpAsgiMiddleware(inner, make_guard(published, DpopChecker()))
    token, body = bound(), body_of("read_notes")
    headers = {"Mcp-Method": "tools/call", "Mcp-Name": "read_notes"}
    status, out = run_asgi(
        app, "POST", "/mcp", body, {**headers, **key.headers(token, "POST", NOTES, body=body)}
    )
    assert status == 200 and out == body
    tampered = body_of("read_notes", page=2)
    signed = key.headers(token, "POST", NOTES, body=body)
    signed.pop("Content-Digest")
    status, out = run_asgi(app, "POST", "/mcp", tampered, {**headers, **signed})
    assert status == 401 and json.loads(out)["error"] == "invalid_dpop_proof"
