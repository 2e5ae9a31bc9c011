"""Story dpop: sender-constrained tokens through the real broker (gunicorn + Redis) and a
resource server protected by errand_rs with DPoP, in process against the broker's JWKS.

An agent exchanges with a DPoP proof and gets a token bound to its key (token_type DPoP,
cnf.jkt, shown by introspection); the resource server accepts it with a proof; the token
stolen without the key is refused however it is presented; a replayed proof is refused at the
broker and at the resource server; the inventory's require_dpop is enforced; the broker's task
endpoints, too, take the bound token only with a proof of its key."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from werkzeug.test import Client

from errand_client import ErrandClient
from errand_rs import DpopChecker, ErrandMiddleware, ErrandVerifier
from tests.support.dpop import DpopKey
from tests.support.stack import DEPLOY_AUD, DPOP_AUD, LOCAL, introspect, mint, post_token

pytestmark = pytest.mark.e2e

RS_URL = "http://localhost/deployments"


def deployments(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"task": environ["errand.token"].task_id}).encode()]


@pytest.fixture(scope="module")
def story(stack, dev_issuer) -> dict[str, Any]:
    """One DPoP-bound token, issued once for the module's checks."""
    agent = ErrandClient(
        stack.url, lambda: mint(dev_issuer), dpop=True, allow_http=True, session=LOCAL
    )
    issued = agent.exchange(audience=DEPLOY_AUD, scopes="deploy:read", purpose="dpop story")
    assert agent.dpop_key is not None
    return {"issued": issued, "key": agent.dpop_key}


@pytest.fixture(scope="module")
def rs(stack) -> Client:
    verifier = ErrandVerifier(stack.url, DEPLOY_AUD)
    return Client(ErrandMiddleware(deployments, verifier, None, dpop=DpopChecker()))


def test_metadata_advertises_dpop(stack) -> None:
    meta = LOCAL.get(stack.url + "/.well-known/oauth-authorization-server", timeout=5).json()
    assert "ES256" in meta["dpop_signing_alg_values_supported"]


def test_the_token_is_bound_and_introspection_says_so(stack, story) -> None:
    issued, key = story["issued"], story["key"]
    assert issued.token_type == "DPoP"
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key.jkt}
    info = introspect(stack, issued.access_token).json()
    assert info["active"] is True and info["token_type"] == "DPoP"
    assert info["cnf"] == {"jkt": key.jkt}


def test_the_resource_server_accepts_the_key_holder_only(rs, story) -> None:
    token, key = story["issued"].access_token, story["key"]
    headers = key.headers(token, "GET", RS_URL)
    assert rs.get("/deployments", headers=headers).status_code == 200
    # The same proof again: replayed.
    replayed = rs.get("/deployments", headers=headers)
    assert replayed.status_code == 401 and replayed.json["error"] == "invalid_dpop_proof"
    # Stolen without the key: the thief's own key, no proof, or the Bearer scheme.
    thief = DpopKey.generate()
    for stolen in (
        thief.headers(token, "GET", RS_URL),
        {"Authorization": f"DPoP {token}"},
        {"Authorization": f"Bearer {token}"},
    ):
        resp = rs.get("/deployments", headers=stolen)
        assert resp.status_code == 401, stolen.keys()
        assert resp.headers["WWW-Authenticate"].startswith("DPoP ")


def test_a_replayed_proof_is_refused_at_the_broker(stack, dev_issuer) -> None:
    key = DpopKey.generate()
    proof = key.proof("POST", stack.url + "/token")
    first = post_token(stack, mint(dev_issuer), headers={"DPoP": proof})
    assert first.status_code == 200, first.text
    again = post_token(stack, mint(dev_issuer), headers={"DPoP": proof})
    assert again.status_code == 400 and again.json()["error"] == "invalid_dpop_proof"


def test_require_dpop_is_enforced(stack, dev_issuer) -> None:
    refused = post_token(stack, mint(dev_issuer), audience=DPOP_AUD)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_dpop_proof"
    proof = DpopKey.generate().proof("POST", stack.url + "/token")
    bound = post_token(stack, mint(dev_issuer), audience=DPOP_AUD, headers={"DPoP": proof})
    assert bound.status_code == 200 and bound.json()["token_type"] == "DPoP"


def test_the_task_endpoints_need_the_key_too(stack, dev_issuer) -> None:
    """The broker's own task endpoints take a bound token only with a proof of its key: the
    thief cannot suspend (or read) the task; its holder completes it with the key."""
    agent = ErrandClient(
        stack.url, lambda: mint(dev_issuer), dpop=True, allow_http=True, session=LOCAL
    )
    issued = agent.exchange(audience=DEPLOY_AUD, scopes="deploy:read", purpose="dpop task")
    token, task = issued.access_token, issued.task_id
    suspend = f"{stack.url}/tasks/{task}/suspend"
    thief = DpopKey.generate()
    for stolen in (
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"DPoP {token}"},
        thief.headers(token, "POST", suspend),
    ):
        resp = LOCAL.post(suspend, headers=stolen, timeout=5)
        assert resp.status_code == 401, resp.text
        assert resp.headers["WWW-Authenticate"].startswith("DPoP ")
    assert LOCAL.get(f"{stack.url}/tasks/{task}", headers=stolen, timeout=5).status_code == 401
    shown = agent.show(issued)
    assert shown is not None and shown["state"] == "running"  # nothing was suspended
    assert agent.complete(issued) is True
    assert introspect(stack, token).json()["active"] is False
