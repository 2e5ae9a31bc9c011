"""Failed admin and client authentication is audited (at most one stream event per client
address per second, every failure counted) and throttled per client address: past the limit
the address gets 429 with Retry-After, even for the right credential, while the right
credential from another address still works."""

from __future__ import annotations

import base64
import json

from tests.support.builders import ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET
from tests.support.http import admin_headers, assert_oauth_error
from tests.support.redis import stream_events

# The documented limit: failed authentications per client address per limits window.
FAILURES_PER_ADDRESS = 10
WRONG_ADMIN = "wrong-admin-token-0123456789abcdef"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def admin_get(client, address: str, token: str):  # type: ignore[no-untyped-def]
    return client.get(
        "/admin/grants", headers=admin_headers(token), environ_base={"REMOTE_ADDR": address}
    )


def introspect_from(client, address: str, token: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post(
        "/introspect", data={"token": token}, headers=headers, environ_base={"REMOTE_ADDR": address}
    )


def auth_failures(events: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in events if e.get("event") == "auth.failed"]


def assert_429(resp) -> None:  # type: ignore[no-untyped-def]
    assert_oauth_error(resp, 429, "temporarily_unavailable")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


def test_the_limit_is_the_documented_constant() -> None:
    from broker.domain import limits

    assert limits.AUTH_FAILURES_PER_ADDRESS == FAILURES_PER_ADDRESS


def test_failed_admin_auth_is_throttled_per_address(client, clock) -> None:
    for _ in range(FAILURES_PER_ADDRESS):
        assert_oauth_error(admin_get(client, "10.9.0.1", WRONG_ADMIN), 401, "invalid_token")
    assert_429(admin_get(client, "10.9.0.1", WRONG_ADMIN))
    # A guess that happens to be right must not get through while the address is throttled.
    assert_429(admin_get(client, "10.9.0.1", ADMIN_TOKEN))
    # The right credential from another address is unaffected.
    assert admin_get(client, "10.9.0.2", ADMIN_TOKEN).status_code == 200
    # The window ends: the address may authenticate again.
    clock.advance(61)
    assert admin_get(client, "10.9.0.1", ADMIN_TOKEN).status_code == 200


def test_failed_admin_auth_is_audited_once_per_address_per_second(client, svc, clock, logs) -> None:
    for _ in range(3):
        assert admin_get(client, "10.9.0.3", WRONG_ADMIN).status_code == 401
    stored = auth_failures(stream_events(svc))
    assert len(stored) == 1, stored
    event = stored[0]
    assert event["kind"] == "admin"
    assert event["outcome"] == "denied"
    assert event["reason"] == "bad_admin_token"
    assert event["client_address"] == "10.9.0.3"
    assert event["request_id"]
    assert event["failures"] == 1
    # Every failure is still counted: each one is a log line carrying the running count.
    logged = auth_failures(logs.audit_events())
    assert [e["failures"] for e in logged] == [1, 2, 3]
    # A second later, the next failure reaches the stream again, with the count so far.
    clock.advance(1.5)
    assert admin_get(client, "10.9.0.3", WRONG_ADMIN).status_code == 401
    stored = auth_failures(stream_events(svc))
    assert [e["failures"] for e in stored] == [1, 4]
    # Neither credential is ever written down.
    text = json.dumps(stream_events(svc)) + json.dumps(logs.audit_events())
    assert WRONG_ADMIN not in text and ADMIN_TOKEN not in text


def test_failed_client_auth_is_throttled_per_address(client, issued) -> None:
    token = issued()["access_token"]
    wrong = basic(CLIENT_ID, "wrong-secret")
    for _ in range(FAILURES_PER_ADDRESS):
        resp = introspect_from(client, "10.9.1.1", token, wrong)
        assert_oauth_error(resp, 401, "invalid_client")
    assert_429(introspect_from(client, "10.9.1.1", token, wrong))
    assert_429(introspect_from(client, "10.9.1.1", token, basic(CLIENT_ID, CLIENT_SECRET)))
    ok = introspect_from(client, "10.9.1.2", token, basic(CLIENT_ID, CLIENT_SECRET))
    assert ok.status_code == 200 and ok.get_json()["active"] is True
    # Holder revocation needs no client authentication: the throttle does not touch it.
    revoked = client.post(
        "/revoke", data={"token": token}, environ_base={"REMOTE_ADDR": "10.9.1.1"}
    )
    assert revoked.status_code == 200


def test_failed_client_auth_is_audited_without_unverified_text(client, issued, svc) -> None:
    token = issued()["access_token"]
    assert introspect_from(client, "10.9.1.3", token, basic(CLIENT_ID, "nope")).status_code == 401
    event = auth_failures(stream_events(svc))[-1]
    assert event["kind"] == "client"
    assert event["reason"] == "bad_client_credentials"
    assert event["client_id"] == CLIENT_ID  # a configured client id is ours to name
    assert event["client_address"] == "10.9.1.3"
    # An id that names no configured client is attacker text: not copied into the stream.
    unknown = "intruder-" + "x" * 200
    resp = introspect_from(client, "10.9.1.4", token, basic(unknown, "nope"))
    assert resp.status_code == 401
    event = auth_failures(stream_events(svc))[-1]
    assert event["client_address"] == "10.9.1.4"
    assert event.get("client_id") is None
    assert unknown not in json.dumps(stream_events(svc))
