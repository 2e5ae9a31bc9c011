"""errand_rs with DPoP-bound tokens (RFC 9449 §7): a proof per request, bound to the token
(ath, cnf.jkt), the request (htm, htu) and, with content_digest, its body; a stolen bound
token is useless without the key."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask import Flask, g
from werkzeug.test import Client

from errand_client.dpop import content_digest
from errand_rs import DpopChecker, ErrandMiddleware, MemoryReplayCache
from errand_rs.flask import ErrandAuth
from tests.support.dpop import DpopKey, make_key, raw_proof

URL = "http://localhost/orders"


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    token = environ.get("errand.token")
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"task": token.task_id if token else None, "body": body.decode()}).encode()]


@pytest.fixture
def key() -> DpopKey:
    return DpopKey.generate()


@pytest.fixture
def bound(mint, key) -> str:
    return mint(dpop_jkt=key.jkt, task_id="task-bound")


@pytest.fixture
def checker() -> DpopChecker:
    return DpopChecker()


@pytest.fixture
def client(verifier, checker) -> Client:
    return Client(
        ErrandMiddleware(app, verifier, None, required_scopes=["orders:read"], dpop=checker)
    )


def test_bound_token_with_its_proof(client, bound, key) -> None:
    resp = client.get("/orders?page=2", headers=key.headers(bound, "GET", URL + "?page=2"))
    assert resp.status_code == 200, resp.json
    assert resp.json["task"] == "task-bound"


def test_a_replayed_proof_is_refused(client, bound, key) -> None:
    headers = key.headers(bound, "GET", URL)
    assert client.get("/orders", headers=headers).status_code == 200
    resp = client.get("/orders", headers=headers)
    assert resp.status_code == 401
    assert resp.json["error"] == "invalid_dpop_proof"
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ") and 'error="invalid_dpop_proof"' in challenge
    assert 'algs="ES256 ' in challenge


def test_a_stolen_bound_token_is_useless_without_the_key(client, verifier, bound, key) -> None:
    thief = DpopKey.generate()
    # The thief's own key, with a perfectly formed proof for this very request and token.
    resp = client.get("/orders", headers=thief.headers(bound, "GET", URL))
    assert resp.status_code == 401 and resp.json["error"] == "invalid_dpop_proof"
    # No proof at all.
    resp = client.get("/orders", headers={"Authorization": f"DPoP {bound}"})
    assert resp.status_code == 401 and resp.json["error"] == "invalid_dpop_proof"
    # As a bearer token, here and at a resource server that knows nothing of DPoP.
    resp = client.get("/orders", headers={"Authorization": f"Bearer {bound}"})
    assert resp.status_code == 401 and resp.json["error"] == "invalid_token"
    plain = Client(ErrandMiddleware(app, verifier, None))
    resp = plain.get("/orders", headers={"Authorization": f"Bearer {bound}"})
    assert resp.status_code == 401 and resp.json["error"] == "invalid_token"
    assert "DPoP" in resp.json["error_description"]
    # The owner's key still works.
    assert client.get("/orders", headers=key.headers(bound, "GET", URL)).status_code == 200


@pytest.mark.parametrize(
    "proof_for",
    [
        {"method": "POST", "url": URL},
        {"method": "GET", "url": "http://localhost/admin"},
        {"method": "GET", "url": "https://localhost/orders"},
        {"method": "GET", "url": URL, "access_token": "another-token"},
    ],
)
def test_a_proof_for_another_request_or_token_is_refused(client, bound, key, proof_for) -> None:
    access_token = proof_for.pop("access_token", bound)
    proof = key.proof(proof_for["method"], proof_for["url"], access_token=access_token)
    resp = client.get("/orders", headers={"Authorization": f"DPoP {bound}", "DPoP": proof})
    assert resp.status_code == 401 and resp.json["error"] == "invalid_dpop_proof"


def test_a_stale_or_hostile_proof_is_refused(client, bound, key) -> None:
    stale = key.proof("GET", URL, access_token=bound)
    old = DpopKey(key.private_key, clock=lambda: time.time() - 120)
    for proof in (
        old.proof("GET", URL, access_token=bound),
        raw_proof(make_key("EdDSA"), htm="GET", htu=URL, iat=time.time(), alg="EdDSA", ath="x"),
        "not.a.proof",
        f"{stale}, {stale}",  # two DPoP headers, as WSGI joins them
    ):
        resp = client.get("/orders", headers={"Authorization": f"DPoP {bound}", "DPoP": proof})
        assert resp.status_code == 401, proof
        assert resp.json["error"] == "invalid_dpop_proof"


def test_an_unbound_token_cannot_use_the_dpop_scheme(client, mint, key) -> None:
    token = mint()
    resp = client.get("/orders", headers=key.headers(token, "GET", URL))
    assert resp.status_code == 401 and resp.json["error"] == "invalid_token"
    # ...but is still good as Bearer unless the resource server requires DPoP.
    assert client.get("/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_require_dpop_refuses_bearer(verifier, mint) -> None:
    strict = Client(ErrandMiddleware(app, verifier, None, dpop=DpopChecker(require_dpop=True)))
    resp = strict.get("/orders", headers={"Authorization": f"Bearer {mint()}"})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("DPoP ")
    resp = strict.get("/orders")
    assert resp.status_code == 401
    assert resp.headers.getlist("WWW-Authenticate") == [
        f'DPoP algs="{" ".join(DpopChecker().algorithms)}"'
    ]


def test_missing_token_offers_both_schemes(client) -> None:
    challenges = client.get("/orders").headers.getlist("WWW-Authenticate")
    assert challenges[0].startswith("DPoP algs=") and challenges[1] == "Bearer"


def test_scopes_are_checked_after_the_proof(client, mint, key) -> None:
    token = mint(dpop_jkt=key.jkt, scopes=("orders:write",))
    resp = client.get("/orders", headers=DpopKey.generate().headers(token, "GET", URL))
    assert resp.status_code == 401  # no key, no hint about scopes
    resp = client.get("/orders", headers=key.headers(token, "GET", URL))
    assert resp.status_code == 403 and resp.json["error"] == "insufficient_scope"


# -- content_digest (the MCP DPoP profile) ----------------------------------------------------
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"orders.read"}}'


def test_content_digest_binds_the_body(client, bound, key) -> None:
    headers = key.headers(bound, "POST", URL, body=BODY)
    resp = client.post("/orders", data=BODY, headers=headers)
    assert resp.status_code == 200, resp.json
    assert resp.json["body"] == BODY.decode()  # the app still reads the whole body
    headers = key.headers(bound, "POST", URL, body=BODY)
    tampered = BODY.replace(b"orders.read", b"orders.drop")
    resp = client.post("/orders", data=tampered, headers=headers)
    assert resp.status_code == 401 and resp.json["error"] == "invalid_dpop_proof"


def test_content_digest_header_must_agree(client, bound, key) -> None:
    headers = key.headers(bound, "POST", URL, body=BODY)
    headers["Content-Digest"] = content_digest(b"something else")
    assert client.post("/orders", data=BODY, headers=headers).status_code == 401


def test_require_content_digest(verifier, bound, key) -> None:
    strict = Client(
        ErrandMiddleware(app, verifier, None, dpop=DpopChecker(require_content_digest=True))
    )
    no_digest = {
        "Authorization": f"DPoP {bound}",
        "DPoP": key.proof("POST", URL, access_token=bound),
    }
    assert strict.post("/orders", data=BODY, headers=no_digest).status_code == 401
    assert (
        strict.post(
            "/orders", data=BODY, headers=key.headers(bound, "POST", URL, body=BODY)
        ).status_code
        == 200
    )
    small = Client(ErrandMiddleware(app, verifier, None, dpop=DpopChecker(max_body_bytes=10)))
    resp = small.post("/orders", data=BODY, headers=key.headers(bound, "POST", URL, body=BODY))
    assert resp.status_code == 401


def test_public_url_names_the_htu(verifier, bound, key) -> None:
    behind_proxy = Client(
        ErrandMiddleware(
            app, verifier, None, dpop=DpopChecker(public_url="https://orders.example/")
        )
    )
    headers = key.headers(bound, "GET", "https://orders.example/orders")
    assert behind_proxy.get("/orders", headers=headers).status_code == 200
    assert behind_proxy.get("/orders", headers=key.headers(bound, "GET", URL)).status_code == 401


def test_flask_extension(verifier, bound, key) -> None:
    flask_app = Flask(__name__)
    auth = ErrandAuth(flask_app, verifier=verifier, feed=None, dpop=DpopChecker())

    @flask_app.post("/orders")
    @auth.require(scopes=["orders:read"])
    def orders() -> dict[str, Any]:
        return {"task": g.errand_token.task_id}

    http = flask_app.test_client()
    headers = key.headers(bound, "POST", URL, body=BODY)
    assert http.post("/orders", data=BODY, headers=headers).status_code == 200
    resp = http.post("/orders", data=BODY, headers=headers)  # replayed
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("DPoP ")
    assert (
        http.post("/orders", data=BODY, headers={"Authorization": f"Bearer {bound}"}).status_code
        == 401
    )


def test_memory_replay_cache_is_bounded_and_expires() -> None:
    now = [1000.0]
    cache = MemoryReplayCache(3, clock=lambda: now[0])
    assert cache.claim("a", 1060) and not cache.claim("a", 1060)
    assert cache.claim("b", 1010) and cache.claim("c", 1060) and cache.claim("d", 1060)
    assert len(cache) == 3  # the oldest went
    now[0] = 1011.0
    assert cache.claim("b", 1070)  # expired, so usable again
    assert len(cache) <= 3
