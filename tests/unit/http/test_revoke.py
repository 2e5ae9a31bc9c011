"""POST /revoke (RFC 7009): 200 whatever the token; the holder can end its own grant."""

from __future__ import annotations

import json

import jwt
import pytest

from broker.domain.audit_hmac import jti_hmac
from broker.store import keys as K
from tests.support.builders import CLIENT_ID, CLIENT_SECRET
from tests.support.http import assert_oauth_error, introspect
from tests.support.jws import assert_not_leaked, new_es256_key, token_parts
from tests.support.redis import redis_keys, stream_events


def revoked_events(svc):
    return [e for e in stream_events(svc) if e.get("event") == "grant.revoked"]


@pytest.mark.parametrize("token", ["unknown", "a.b.c", "x" * 8000, "eyJhbGciOiJub25lIn0.e30."])
def test_unknown_tokens_get_200(client, svc, token) -> None:
    resp = client.post("/revoke", data={"token": token})
    assert resp.status_code == 200
    assert resp.get_json() == {}
    assert resp.headers["Cache-Control"] == "no-store"
    assert revoked_events(svc) == []


def test_foreign_signed_and_subject_tokens_get_200_and_revoke_nothing(
    client, issued, subject, svc
) -> None:
    body = issued()
    claims = token_parts(body["access_token"])[1]
    forged = jwt.encode(
        claims,
        new_es256_key().private_key,
        algorithm="ES256",
        headers={"typ": "at+jwt", "kid": svc.keyring.active.kid},
    )
    for token in (forged, subject()):
        assert client.post("/revoke", data={"token": token}).status_code == 200
    assert introspect(client, body["access_token"]).get_json()["active"] is True
    assert revoked_events(svc) == []


def test_holder_revokes_its_own_token(client, issued, svc, logs) -> None:
    body = issued(task_id="rev-task")
    token = body["access_token"]
    jti = token_parts(token)[1]["jti"]
    resp = client.post("/revoke", data={"token": token, "token_type_hint": "access_token"})
    assert resp.status_code == 200 and resp.get_json() == {}
    assert introspect(client, token).get_json() == {"active": False}

    (event,) = revoked_events(svc)
    assert event["jti_hmac"] == jti_hmac(jti)
    assert event["actor"] == "holder"
    assert event["reason"] == "revoked"
    assert event["task"] == "rev-task"
    assert event["identity"] == "acme-deploy"
    assert_not_leaked(token, [json.dumps(e) for e in stream_events(svc)] + logs.lines())

    # The grant and its index entries are gone.
    r = svc.redis
    assert not r.exists(K.grant(jti))
    for index in (K.task_index("rev-task"), K.identity_index("acme-deploy")):
        assert r.zscore(index, jti) is None
    assert not any(m.startswith(jti + " ") for m in r.zrange(K.EXPIRY_INDEX, 0, -1))


def test_revoking_twice_is_200_and_audited_once(client, issued, svc) -> None:
    token = issued()["access_token"]
    assert client.post("/revoke", data={"token": token}).status_code == 200
    assert client.post("/revoke", data={"token": token}).status_code == 200
    assert len(revoked_events(svc)) == 1


def test_revocation_ends_only_that_token(client, issued) -> None:
    a = issued(task_id="shared")["access_token"]
    b = issued(task_id="shared")["access_token"]
    client.post("/revoke", data={"token": a})
    assert introspect(client, a).get_json()["active"] is False
    assert introspect(client, b).get_json()["active"] is True


def test_authenticated_client_revocation_is_attributed(client, issued, svc) -> None:
    token = issued()["access_token"]
    resp = client.post("/revoke", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert resp.status_code == 200
    assert revoked_events(svc)[0]["actor"] == f"client:{CLIENT_ID}"


def test_failed_client_auth_on_revoke_is_401_and_revokes_nothing(client, issued) -> None:
    token = issued()["access_token"]
    resp = client.post("/revoke", data={"token": token}, auth=(CLIENT_ID, "wrong"))
    assert_oauth_error(resp, 401, "invalid_client")
    assert introspect(client, token).get_json()["active"] is True


def test_expired_token_can_still_be_revoked(client, issued, svc, clock) -> None:
    token = issued(task_id="late", requested_lifetime="60")["access_token"]
    clock.advance(61)
    assert client.post("/revoke", data={"token": token}).status_code == 200


def test_missing_token_is_invalid_request(client) -> None:
    assert_oauth_error(client.post("/revoke", data={}), 400, "invalid_request")


def test_redis_down_is_503(client, issued, fake_server, svc) -> None:
    token = issued()["access_token"]
    fake_server.connected = False
    resp = client.post("/revoke", data={"token": token})
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert "Retry-After" in resp.headers
    fake_server.connected = True
    assert introspect(client, token).get_json()["active"] is True
    assert client.post("/revoke", data={"token": token}).status_code == 200
    assert introspect(client, token).get_json()["active"] is False
    assert redis_keys(svc, "errand:*:grant:*") == set()
