"""POST /token (RFC 8693): response shape, form rules, replay, fail-closed storage."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import redis

from broker.domain.audit_hmac import jti_hmac, token_hmac
from broker.domain.models import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT
from broker.identity.verifier import token_sha256
from tests.support.builders import (
    BROKER_ISSUER,
    DEPLOY_AUD,
    UNIT_ISSUER,
    fake_services,
    make_app,
    make_config,
)
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error, introspect
from tests.support.jws import assert_not_leaked, token_parts
from tests.support.redis import grant_state_keys, stream_events

# -- success ----------------------------------------------------------------------------------


def test_response_shape_rfc8693(exchange) -> None:
    resp = exchange()
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Pragma"] == "no-cache"
    body = resp.get_json()
    assert set(body) == {
        "access_token",
        "issued_token_type",
        "token_type",
        "expires_in",
        "scope",
        "task_id",
    }
    assert body["issued_token_type"] == TOKEN_TYPE_ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "deploy:write"
    assert isinstance(body["task_id"], str) and body["task_id"]


def test_minted_jwt_header_and_claims(issued, svc, clock) -> None:
    body = issued(task_id="build-42")
    token = body["access_token"]
    header, _ = token_parts(token)
    assert header["typ"] == "at+jwt"
    assert header["kid"] == svc.keyring.active.kid
    assert header["alg"] == svc.keyring.active.alg
    claims = jwt.decode(
        token,
        svc.keyring.active.public_key,
        algorithms=[svc.keyring.active.alg],
        audience=DEPLOY_AUD,
        issuer=BROKER_ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == BROKER_ISSUER
    assert claims["sub"] == "acme-deploy"
    assert claims["aud"] == DEPLOY_AUD
    assert claims["iat"] == int(clock.now())
    assert claims["exp"] == claims["iat"] + body["expires_in"]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert claims["client_id"] == "acme-deploy"
    assert claims["scope"] == "deploy:write"
    assert claims["task_id"] == "build-42"
    assert claims["identity_type"] == "service"


def test_each_exchange_gets_a_fresh_jti_and_task(issued) -> None:
    a, b = issued(), issued()
    assert token_parts(a["access_token"])[1]["jti"] != token_parts(b["access_token"])[1]["jti"]
    assert a["task_id"] != b["task_id"]


def test_caller_named_task_id_is_honoured(issued) -> None:
    first = issued(task_id="deploy-2027.06:run@7+x")
    second = issued(task_id="deploy-2027.06:run@7+x")
    assert first["task_id"] == second["task_id"] == "deploy-2027.06:run@7+x"


def test_broker_generated_task_id_can_be_named_in_a_later_exchange(issued, exchange) -> None:
    first = issued()
    resp = exchange(task_id=first["task_id"])
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["task_id"] == first["task_id"]


def test_bad_task_id_with_a_newline_is_invalid_request(exchange, svc) -> None:
    body = assert_oauth_error(exchange(task_id="task\nforged"), 400, "invalid_request")
    assert body["error_description"].startswith("task_id")
    assert grant_state_keys(svc) == set()


@pytest.mark.parametrize("task_id", ["task one", "*", "x" * 200, "-leading-dash", "a/b"])
def test_bad_task_id_is_invalid_request(exchange, svc, task_id) -> None:
    body = assert_oauth_error(exchange(task_id=task_id), 400, "invalid_request")
    assert body["error_description"].startswith("task_id")
    assert grant_state_keys(svc) == set()


def test_unknown_parameters_are_ignored(exchange) -> None:
    resp = exchange(colour="blue", client_id="whoever", nonce="n", **{"x-extra": "1"})
    assert resp.status_code == 200, resp.get_json()


def test_repeated_audience_is_allowed(exchange) -> None:
    resp = exchange(audience=[DEPLOY_AUD, "https://status.acme.example"])
    assert resp.status_code == 200, resp.get_json()


def test_requested_token_type_access_token_or_jwt(exchange) -> None:
    assert exchange(requested_token_type=TOKEN_TYPE_ACCESS_TOKEN).status_code == 200
    assert exchange(requested_token_type=TOKEN_TYPE_JWT).status_code == 200
    resp = exchange(requested_token_type="urn:ietf:params:oauth:token-type:refresh_token")
    assert_oauth_error(resp, 400, "invalid_request")


# -- form errors ------------------------------------------------------------------------------


def test_unsupported_grant_type(client, subject) -> None:
    for grant in ("client_credentials", "authorization_code", GRANT_TYPE_TOKEN_EXCHANGE + "x"):
        resp = client.post("/token", data=deploy_form(subject(), grant_type=grant))
        assert_oauth_error(resp, 400, "unsupported_grant_type")


def test_missing_grant_type(client, subject) -> None:
    form = deploy_form(subject())
    del form["grant_type"]
    assert_oauth_error(client.post("/token", data=form), 400, "invalid_request")
    assert_oauth_error(
        client.post("/token", data={**form, "grant_type": ""}), 400, "invalid_request"
    )


def test_json_body_is_invalid_request(client, subject, svc) -> None:
    resp = client.post("/token", json=deploy_form(subject()))
    assert_oauth_error(resp, 400, "invalid_request")
    assert grant_state_keys(svc) == set()


def test_multipart_body_is_invalid_request(client, subject) -> None:
    resp = client.post("/token", data=deploy_form(subject()), content_type="multipart/form-data")
    assert_oauth_error(resp, 400, "invalid_request")


def test_repeated_scope_is_invalid_request(exchange) -> None:
    body = assert_oauth_error(
        exchange(scope=["deploy:read", "deploy:write"]), 400, "invalid_request"
    )
    assert "scope" in body["error_description"]


@pytest.mark.parametrize("name", ["subject_token", "grant_type", "subject_token_type", "task_id"])
def test_other_repeated_parameters_are_invalid_request(client, subject, svc, name) -> None:
    form = deploy_form(subject(), task_id="t1")
    form[name] = [form[name], form[name]]
    body = assert_oauth_error(client.post("/token", data=form), 400, "invalid_request")
    assert name in body["error_description"]
    assert grant_state_keys(svc) == set()


@pytest.mark.parametrize(
    "name", ["subject_token", "actor_token", "token", "client_secret", "assertion"]
)
def test_credentials_in_the_query_string_are_refused(client, subject, svc, name) -> None:
    token = subject()
    resp = client.post(f"/token?{name}={token}", data=deploy_form(token))
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "URL" in body["error_description"]
    assert grant_state_keys(svc) == set()


def test_actor_token_with_a_workload_subject_is_refused(exchange, subject, svc) -> None:
    """Delegation starts from an Errand access token: a workload token as the subject of an
    actor_token is refused, and so is actor_token_type alone (RFC 8693 §2.1)."""
    resp = exchange(actor_token=subject(), actor_token_type=TOKEN_TYPE_JWT)
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert body["error_description"].startswith("subject_token:")
    body = assert_oauth_error(exchange(actor_token_type=TOKEN_TYPE_JWT), 400, "invalid_request")
    assert "actor_token" in body["error_description"]
    assert grant_state_keys(svc) == set()


def test_oversized_body_is_413_json(client, subject) -> None:
    resp = client.post("/token", data=deploy_form(subject(), padding="x" * (70 * 1024)))
    assert resp.status_code == 413
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["error"] == "invalid_request" and body["error_description"]
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE},
        {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": "x"},
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "",
            "subject_token_type": TOKEN_TYPE_JWT,
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "a.b.c",
            "subject_token_type": "saml",
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "a.b.c",
            "subject_token_type": TOKEN_TYPE_JWT,
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "x" * 16385,
            "subject_token_type": TOKEN_TYPE_JWT,
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "é.é.é",
            "subject_token_type": TOKEN_TYPE_JWT,
        },
        {"grant_type": "\x00", "subject_token": "a.b.c"},
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "a.b.c",
            "subject_token_type": TOKEN_TYPE_JWT,
            "audience": "",
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "a.b.c",
            "subject_token_type": TOKEN_TYPE_JWT,
            "resource": "not a uri",
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "a.b.c",
            "subject_token_type": TOKEN_TYPE_JWT,
            "resource": "https://x.example/#frag",
        },
        {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "a.b.c",
            "subject_token_type": TOKEN_TYPE_JWT,
            "purpose": "",
        },
    ],
)
def test_malformed_requests_are_json_errors_never_500(client, form) -> None:
    resp = client.post("/token", data=form)
    assert 400 <= resp.status_code < 500, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["error"] in ("invalid_request", "unsupported_grant_type", "invalid_scope")
    assert body["error_description"]
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "scope", ["", " ", "a  b", 'deploy"read', "a\\b", "é", " deploy:read", "x" * 129]
)
def test_malformed_scope_is_invalid_scope(exchange, scope) -> None:
    assert_oauth_error(exchange(scope=scope), 400, "invalid_scope")


def test_other_methods_are_json_errors(client) -> None:
    resp = client.get("/token")
    assert resp.status_code == 405
    assert resp.get_json()["error"] == "invalid_request"
    assert client.get("/nope").get_json()["error"] == "not_found"


# -- replay -----------------------------------------------------------------------------------


def test_replayed_subject_token_is_refused_and_the_first_unaffected(
    exchange, subject, client, svc
) -> None:
    token = subject()
    first = exchange(token)
    assert first.status_code == 200
    state_after_first = grant_state_keys(svc)
    again = exchange(token)
    body = assert_oauth_error(again, 400, "invalid_request")
    assert "already been used" in body["error_description"]
    assert grant_state_keys(svc) == state_after_first
    assert introspect(client, first.get_json()["access_token"]).get_json()["active"] is True
    # Different request parameters do not make it a new token.
    assert exchange(token, scope="deploy:read", task_id="other").status_code == 400


def test_replay_is_keyed_on_issuer_and_jti_not_token_bytes(exchange, subject) -> None:
    # Two differently-signed tokens that share a jti: the second is a replay.
    first = subject(jti="shared-jti")
    second = subject(jti="shared-jti", run_id="other")
    assert first != second
    assert exchange(first).status_code == 200
    assert_oauth_error(exchange(second), 400, "invalid_request")


def test_invalid_scope_names_the_refused_scopes(exchange) -> None:
    resp = exchange(scope="deploy:read admin pay:all")
    assert_oauth_error(resp, 400, "invalid_scope")
    assert resp.get_json()["error_description"] == (
        "scope not allowed for this identity: admin, pay:all"
    )


def test_policy_denial_does_not_burn_the_jti(exchange, subject, svc) -> None:
    token = subject()
    assert_oauth_error(exchange(token, audience="https://evil.example"), 400, "invalid_target")
    assert_oauth_error(exchange(token, scope="admin"), 400, "invalid_scope")
    assert_oauth_error(exchange(token, audience=None), 400, "invalid_target")
    assert grant_state_keys(svc) == set()
    assert exchange(token).status_code == 200


def test_reuse_within_lifetime_issuer_allows_reuse(
    key_dir, clock, fetcher, subject, tmp_path
) -> None:
    cfg = make_config(
        UNIT_ISSUER, mutate=lambda d: d["issuers"][0].update(replay="reuse-within-lifetime")
    )
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    client = make_app(svc, tmp_path).test_client()
    token = subject()
    assert client.post("/token", data=deploy_form(token)).status_code == 200
    assert client.post("/token", data=deploy_form(token)).status_code == 200


# -- Redis faults: fail closed ----------------------------------------------------------------


def test_redis_down_is_503_and_writes_nothing(exchange, subject, fake_server, svc) -> None:
    token = subject()
    fake_server.connected = False
    resp = exchange(token)
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert resp.headers["Retry-After"].isdigit()
    assert "access_token" not in resp.get_json()
    fake_server.connected = True
    assert grant_state_keys(svc) == set()
    # Recovery without a restart, and the jti was not burned.
    assert exchange(token).status_code == 200


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    ],
)
def test_grant_write_failure_is_503_and_writes_nothing(
    exchange, subject, svc, monkeypatch, error
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(svc.store, "_save", fail)
    token = subject()
    resp = exchange(token)
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert resp.headers["Retry-After"].isdigit()
    assert grant_state_keys(svc) == set()
    denied = [e for e in stream_events(svc) if e.get("event") == "token.exchange"]
    assert denied and denied[-1]["outcome"] == "denied"
    assert not any(e.get("outcome") == "issued" for e in denied)
    monkeypatch.undo()
    assert exchange(token).status_code == 200


def test_preflight_read_failure_is_503(exchange, svc, monkeypatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(svc.store, "_preflight", fail)  # the one read before deciding
    assert_oauth_error(exchange(), 503, "temporarily_unavailable")


# -- audit ------------------------------------------------------------------------------------


def test_successful_exchange_is_audited_without_tokens(exchange, subject, svc, logs) -> None:
    token = subject()
    resp = exchange(token, task_id="audited-task", headers=None)
    access = resp.get_json()["access_token"]
    (event,) = [e for e in stream_events(svc) if e.get("event") == "token.exchange"]
    assert event["outcome"] == "issued"
    assert event["identity"] == "acme-deploy"
    assert event["rule"] == "acme-deploy#0"
    assert event["issuer"] == "gha"
    assert event["task"] == "audited-task"
    assert event["token_hmac"] == token_hmac(token)
    assert event["jti_hmac"] == jti_hmac(token_parts(access)[1]["jti"])
    texts = [json.dumps(e) for e in stream_events(svc)] + logs.lines()
    assert_not_leaked(token, texts)
    assert_not_leaked(access, texts)
    # Neither the token's SHA-256 nor the jti: a leaked log cannot confirm a guessed token.
    assert_not_leaked(token_sha256(token), texts)
    assert_not_leaked(token_parts(access)[1]["jti"], texts)


def test_request_id_header_reaches_the_audit_event(client, subject, svc) -> None:
    client.post("/token", data=deploy_form(subject()), headers={"X-Request-Id": "req-123"})
    client.post("/token", data=deploy_form(subject()), headers={"X-Request-Id": "bad id\x01"})
    events = [e for e in stream_events(svc) if e.get("event") == "token.exchange"]
    assert events[0]["request_id"] == "req-123"
    assert events[1]["request_id"] != "bad id\x01" and events[1]["request_id"]


def test_every_denial_is_audited_once_without_the_token(exchange, subject, svc, logs) -> None:
    cases = [
        (subject(), {"audience": "https://evil.example"}, "audience_not_allowed"),
        (subject(), {"scope": "admin"}, "scope_not_allowed"),
        (subject(ref="refs/heads/feature"), {}, "no_matching_identity"),
        (subject(aud="other"), {}, "wrong_audience"),
        ("not-a-token", {}, "malformed_token"),
    ]
    for token, extra, reason in cases:
        before = len(stream_events(svc))
        resp = exchange(token, **extra)
        assert resp.status_code == 400
        new = stream_events(svc)[before:]
        assert [e["reason"] for e in new] == [reason]
        assert new[0]["outcome"] == "denied"
        assert new[0]["client_address"] == "127.0.0.1"
        assert new[0]["request_id"]
        assert_not_leaked(token, [json.dumps(e) for e in new] + logs.lines())


def test_denial_of_an_invalid_subject_token_records_its_hash(exchange, subject, svc) -> None:
    token = subject(aud="someone-else")
    assert exchange(token).status_code == 400
    (event,) = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert event["token_hmac"] == token_hmac(token)


def test_request_refused_by_the_form_layer_is_audited(exchange, subject, svc) -> None:
    assert exchange(actor_token=subject(), actor_token_type=TOKEN_TYPE_JWT).status_code == 400
    events = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert len(events) == 1
