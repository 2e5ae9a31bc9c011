"""POST /introspect (RFC 7662): authenticated clients only; active only for live grants."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest

from broker.store import keys as K
from broker.tokens.mint import access_token_claims
from tests.support.builders import CLIENT_ID, CLIENT_SECRET, DEPLOY_AUD
from tests.support.http import assert_oauth_error, introspect
from tests.support.jws import new_es256_key, token_parts


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


# -- client authentication ---------------------------------------------------------------------


def test_introspection_requires_client_auth(client, issued) -> None:
    token = issued()["access_token"]
    resp = client.post("/introspect", data={"token": token})
    body = assert_oauth_error(resp, 401, "invalid_client")
    assert "active" not in body
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "headers",
    [
        basic(CLIENT_ID, "wrong-secret"),
        basic("unknown-client", CLIENT_SECRET),
        basic(CLIENT_ID, ""),
        {"Authorization": "Basic not-base64!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
    ],
)
def test_bad_client_credentials_are_401(client, issued, headers) -> None:
    resp = client.post("/introspect", data={"token": issued()["access_token"]}, headers=headers)
    body = assert_oauth_error(resp, 401, "invalid_client")
    assert "active" not in body
    assert "WWW-Authenticate" in resp.headers


def test_bearer_is_not_client_auth(client, issued) -> None:
    token = issued()["access_token"]
    resp = client.post(
        "/introspect", data={"token": token}, headers={"Authorization": f"Bearer {token}"}
    )
    assert_oauth_error(resp, 401, "invalid_client")


def test_client_secret_post_works(client, issued) -> None:
    token = issued()["access_token"]
    resp = client.post(
        "/introspect", data={"token": token, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    assert resp.status_code == 200
    assert resp.get_json()["active"] is True
    bad = client.post(
        "/introspect", data={"token": token, "client_id": CLIENT_ID, "client_secret": "nope"}
    )
    assert_oauth_error(bad, 401, "invalid_client")
    missing = client.post("/introspect", data={"token": token, "client_id": CLIENT_ID})
    assert_oauth_error(missing, 401, "invalid_client")


def test_two_auth_methods_at_once_are_refused(client, issued) -> None:
    token = issued()["access_token"]
    resp = client.post(
        "/introspect",
        data={"token": token, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert_oauth_error(resp, 401, "invalid_client")


def test_missing_or_empty_token_parameter_is_invalid_request(client) -> None:
    resp = client.post("/introspect", data={}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert_oauth_error(resp, 400, "invalid_request")
    resp = client.post("/introspect", data={"token": ""}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert_oauth_error(resp, 400, "invalid_request")


def test_token_in_the_url_is_refused(client, issued) -> None:
    token = issued()["access_token"]
    resp = client.post(
        f"/introspect?token={token}", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET)
    )
    assert_oauth_error(resp, 400, "invalid_request")


# -- active and inactive ------------------------------------------------------------------------


def test_active_token_fields(client, issued, clock) -> None:
    body = issued(task_id="intro-task", scope="deploy:read deploy:write")
    resp = introspect(client, body["access_token"])
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    data = resp.get_json()
    claims = token_parts(body["access_token"])[1]
    assert data["active"] is True
    assert data["scope"] == "deploy:read deploy:write"
    assert data["sub"] == "acme-deploy"
    assert data["aud"] == DEPLOY_AUD
    assert data["exp"] == claims["exp"] == int(clock.now()) + 300
    assert data["iat"] == claims["iat"]
    assert data["jti"] == claims["jti"]
    assert data["client_id"] == "acme-deploy"
    assert data["task_id"] == "intro-task"
    assert data["identity_type"] == "service"
    assert data["owner"] == "platform-team"
    assert data["token_type"] == "Bearer"
    assert data["iss"] == "https://errand.test"


def test_expired_token_is_inactive(client, issued, clock) -> None:
    token = issued()["access_token"]
    clock.advance(299)
    assert introspect(client, token).get_json()["active"] is True
    clock.advance(1)
    assert introspect(client, token).get_json() == {"active": False}


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "x" * 5000,
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "\u00e9.\u00e9.\u00e9",
    ],
)
def test_garbage_is_inactive(client, token) -> None:
    resp = client.post("/introspect", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert resp.status_code == 200
    assert resp.get_json() == {"active": False}


def test_subject_token_is_not_an_access_token(client, subject) -> None:
    assert introspect(client, subject()).get_json() == {"active": False}


def _forge(svc: Any, body: dict[str, Any], key: Any, **header: Any) -> str:
    claims = token_parts(body["access_token"])[1]
    hdr = {"typ": "at+jwt", "kid": svc.keyring.active.kid, **header}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=hdr)


def test_token_signed_by_another_key_is_inactive(client, issued, svc) -> None:
    body = issued()
    other = new_es256_key()
    # Same claims (the grant is live), our kid, the wrong key.
    assert introspect(client, _forge(svc, body, other)).get_json() == {"active": False}
    # Same claims, the other key's own kid.
    assert introspect(client, _forge(svc, body, other, kid=other.kid)).get_json() == {
        "active": False
    }
    # The original is still fine.
    assert introspect(client, body["access_token"]).get_json()["active"] is True


def test_our_key_but_wrong_typ_is_inactive(client, issued, svc) -> None:
    body = issued()
    for typ in ("JWT", "at+JWT2", None):
        forged = _forge(svc, body, svc.keyring.active, typ=typ)
        assert introspect(client, forged).get_json() == {"active": False}


def test_token_with_a_different_task_than_its_grant_is_inactive(client, issued, svc) -> None:
    body = issued(task_id="real-task")
    claims = token_parts(body["access_token"])[1]
    forged = jwt.encode(
        {**claims, "task_id": "other-task"},
        svc.keyring.active.private_key,
        algorithm="ES256",
        headers={"typ": "at+jwt", "kid": svc.keyring.active.kid},
    )
    assert introspect(client, forged).get_json() == {"active": False}


def test_redis_down_is_503_never_active(client, issued, fake_server) -> None:
    token = issued()["access_token"]
    fake_server.connected = False
    resp = introspect(client, token)
    body = assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert "active" not in body
    assert resp.headers["Retry-After"].isdigit()
    fake_server.connected = True
    assert introspect(client, token).get_json()["active"] is True


def test_revoked_token_is_inactive(client, issued) -> None:
    token = issued()["access_token"]
    assert client.post("/revoke", data={"token": token}).status_code == 200
    assert introspect(client, token).get_json() == {"active": False}


def test_completed_task_makes_all_its_tokens_inactive(client, issued) -> None:
    a = issued(task_id="task-a")["access_token"]
    a2 = issued(task_id="task-a", scope="deploy:read")["access_token"]
    b = issued(task_id="task-b")["access_token"]
    resp = client.post("/tasks/complete", headers={"Authorization": f"Bearer {a}"})
    assert resp.status_code == 200
    assert introspect(client, a).get_json() == {"active": False}
    assert introspect(client, a2).get_json() == {"active": False}
    assert introspect(client, b).get_json()["active"] is True


def test_revoke_all_epoch_makes_older_grants_inactive(client, issued, svc) -> None:
    token = issued()["access_token"]
    svc.redis.incr(K.EPOCH)
    assert introspect(client, token).get_json() == {"active": False}
    assert introspect(client, issued()["access_token"]).get_json()["active"] is True


def test_access_token_claims_helper_is_what_introspection_reads() -> None:
    # Guard: the minted claims include everything introspection depends on.
    from broker.domain.models import Grant

    g = Grant(
        jti="j",
        identity_id="i",
        identity_type="service",
        owner="o",
        task_id="t",
        audiences=("a", "b"),
        scopes=("s",),
        iat=1,
        exp=2,
        client_id="i",
        issuer_id="gha",
        epoch=0,
    )
    claims = access_token_claims(g, "https://errand.test")
    assert {"jti", "sub", "task_id", "exp", "iat", "iss"} <= set(claims)
    assert claims["aud"] == ["a", "b"]
