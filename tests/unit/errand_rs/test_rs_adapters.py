"""The Flask extension and the WSGI middleware: RFC 6750 statuses, headers and bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, g
from werkzeug.test import Client

from errand_rs import ErrandMiddleware
from errand_rs.flask import ErrandAuth


@pytest.fixture
def flask_app(verifier, feed):
    app = Flask("orders")
    auth = ErrandAuth(app, verifier=verifier, feed=feed, realm="orders")

    @app.get("/orders")
    @auth.require(scopes=["orders:read"])
    def orders() -> dict[str, Any]:
        return {"task": g.errand_token.task_id, "sub": g.errand_token["sub"]}

    @app.post("/orders")
    @auth.require(scopes="orders:write orders:read")
    def create() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/me")
    @auth.require
    def me() -> dict[str, Any]:
        return {"scopes": sorted(g.errand_token.scopes)}

    @app.get("/healthz")
    def health() -> str:
        return "ok"

    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_flask_valid_token_reaches_the_view_with_claims(flask_app, feed, mint):
    feed.sync_once()
    resp = flask_app.test_client().get("/orders", headers=bearer(mint(task_id="task-9")))
    assert resp.status_code == 200
    assert resp.json == {"task": "task-9", "sub": "acme-agent"}
    resp = flask_app.test_client().get("/me", headers=bearer(mint()))
    assert resp.json == {"scopes": ["orders:read", "orders:write"]}


def test_flask_no_token_is_401_without_error_code(flask_app, feed):
    feed.sync_once()
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        resp = flask_app.test_client().get("/orders", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="orders"'  # RFC 6750 §3.1
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.json["error_description"] == "A bearer token is required."


def test_flask_invalid_token_is_401_invalid_token(flask_app, feed, sign):
    feed.sync_once()
    resp = flask_app.test_client().get("/orders", headers=bearer(sign(headers={"typ": "JWT"})))
    assert resp.status_code == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="orders", error="invalid_token", error_description="')
    assert resp.json["error"] == "invalid_token"
    assert resp.mimetype == "application/json"


def test_flask_missing_scope_is_403_insufficient_scope(flask_app, feed, mint):
    feed.sync_once()
    resp = flask_app.test_client().post("/orders", headers=bearer(mint(scopes=("orders:read",))))
    assert resp.status_code == 403
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert 'scope="orders:write orders:read"' in resp.headers["WWW-Authenticate"]
    assert resp.json["error"] == "insufficient_scope"


def test_flask_malformed_authorization_is_400(flask_app, feed):
    feed.sync_once()
    for value in ("Bearer", "Bearer a b", "Bearer a,b"):
        resp = flask_app.test_client().get("/orders", headers={"Authorization": value})
        assert resp.status_code == 400, value
        assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]


def test_flask_revoked_and_feed_unavailable_are_401(flask_app, feed, mint, published, verifier):
    token = mint()
    client = flask_app.test_client()
    resp = client.get("/orders", headers=bearer(token))  # never synced: fail closed
    assert resp.status_code == 401
    assert 'error_description="revocation feed unavailable"' in resp.headers["WWW-Authenticate"]
    feed.sync_once()
    assert client.get("/orders", headers=bearer(token)).status_code == 200
    published.revoke("task", verifier.verify(token).task_id)
    feed.sync_once()
    resp = client.get("/orders", headers=bearer(token))
    assert resp.status_code == 401
    assert resp.json == {
        "error": "invalid_token",
        "error_description": "The access token has been revoked.",
    }


def test_flask_unprotected_routes_are_untouched(flask_app):
    assert flask_app.test_client().get("/healthz").status_code == 200


def test_flask_feed_must_be_chosen_explicitly(verifier):
    with pytest.raises(TypeError):
        ErrandAuth(Flask("x"), verifier=verifier)  # type: ignore[call-arg]


def test_flask_init_app_factory_pattern(verifier, mint):
    auth = ErrandAuth(verifier=verifier, feed=None)  # offline only, chosen explicitly
    app = Flask("factory")
    auth.init_app(app)

    @app.get("/x")
    @auth.require()
    def x() -> str:
        return "ok"

    assert app.extensions["errand_rs"] is auth
    assert app.test_client().get("/x", headers=bearer(mint())).status_code == 200


# -- WSGI ---------------------------------------------------------------------------------
def downstream(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    token = environ.get("errand.token")
    body = json.dumps({"task": token.task_id if token else None}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture
def wsgi_client(verifier, feed) -> Client:
    app = ErrandMiddleware(
        downstream,
        verifier,
        feed,
        required_scopes=["orders:read"],
        exempt_paths=["/healthz"],
        realm="orders",
    )
    return Client(app)


def test_wsgi_valid_token_sets_environ(wsgi_client, feed, mint):
    feed.sync_once()
    resp = wsgi_client.get("/orders", headers=bearer(mint(task_id="task-w")))
    assert resp.status_code == 200
    assert resp.json == {"task": "task-w"}


def test_wsgi_rejections(wsgi_client, feed, mint, sign, published, verifier):
    feed.sync_once()
    resp = wsgi_client.get("/orders")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="orders"'

    resp = wsgi_client.get("/orders", headers=bearer(sign(claims={"aud": "https://other.example"})))
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.json["error"] == "invalid_token"

    resp = wsgi_client.get("/orders", headers=bearer(mint(scopes=("orders:write",))))
    assert resp.status_code == 403
    assert 'error="insufficient_scope", ' in resp.headers["WWW-Authenticate"]
    assert 'scope="orders:read"' in resp.headers["WWW-Authenticate"]

    resp = wsgi_client.get("/orders", headers={"Authorization": "Bearer a b"})
    assert resp.status_code == 400

    token = mint()
    published.revoke("jti", verifier.verify(token).jti)
    feed.sync_once()
    resp = wsgi_client.get("/orders", headers=bearer(token))
    assert resp.status_code == 401
    assert resp.json["error_description"] == "The access token has been revoked."


def test_wsgi_feed_unavailable_is_401(wsgi_client, mint):
    resp = wsgi_client.get("/orders", headers=bearer(mint()))
    assert resp.status_code == 401
    assert resp.json["error_description"] == "revocation feed unavailable"


def test_wsgi_exempt_paths_are_exact(wsgi_client, feed):
    feed.sync_once()
    resp = wsgi_client.get("/healthz")
    assert resp.status_code == 200 and resp.json == {"task": None}
    for path in ("/healthz/", "/healthzx", "/healthz/../orders"):
        assert wsgi_client.get(path).status_code == 401, path


def test_wsgi_a_forged_environ_key_is_ignored(verifier, feed):
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["token"] = environ.get("errand.token")
        start_response("200 OK", [])
        return [b""]

    mw = ErrandMiddleware(app, verifier, feed, exempt_paths=["/open"])
    environ = {"PATH_INFO": "/open", "REQUEST_METHOD": "GET", "errand.token": "forged"}
    mw(environ, lambda *a: None)
    assert seen["token"] is None
