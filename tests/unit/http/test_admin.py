"""/admin/*: operator endpoints behind the admin bearer credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.builders import ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET
from tests.support.http import admin_headers, assert_oauth_error, introspect
from tests.support.jws import token_parts


def jti_of(body) -> str:
    return str(token_parts(body["access_token"])[1]["jti"])


@pytest.mark.parametrize("path", ["/admin/grants", "/admin/audit"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        admin_headers("wrong-admin-token-0123456789"),
        admin_headers(ADMIN_TOKEN + "x"),
        admin_headers(ADMIN_TOKEN.upper()),
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
    ],
)
def test_admin_endpoints_need_the_admin_token(client, issued, path, headers) -> None:
    issued()
    resp = client.get(path, headers=headers)
    body = assert_oauth_error(resp, 401, "invalid_token")
    assert "grants" not in body and "events" not in body


def test_client_credentials_are_not_admin(client, issued) -> None:
    token = issued()["access_token"]
    assert client.get("/admin/grants", auth=(CLIENT_ID, CLIENT_SECRET)).status_code == 401
    assert (
        client.get("/admin/grants", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )


def test_admin_revoke_needs_the_admin_token(client, issued) -> None:
    body = issued()
    resp = client.post(
        f"/admin/grants/{jti_of(body)}/revoke", headers=admin_headers("nope-nope-nope-nope-nope")
    )
    assert_oauth_error(resp, 401, "invalid_token")
    assert introspect(client, body["access_token"]).get_json()["active"] is True


def test_admin_disabled_without_a_configured_credential(svc) -> None:
    from broker.app import create_app
    from broker.settings import Settings

    settings = Settings(
        config_path=Path("unused.yaml"), redis_url="redis://fake", signing_key_dir=Path("unused")
    )
    client = create_app(settings, services=svc).test_client()
    assert_oauth_error(client.get("/admin/grants", headers=admin_headers()), 401, "invalid_token")


def test_list_grants_and_filters(client, issued) -> None:
    a = issued(task_id="task-a")
    b = issued(task_id="task-b")
    resp = client.get("/admin/grants", headers=admin_headers())
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    grants = resp.get_json()["grants"]
    assert {g["jti"] for g in grants} == {jti_of(a), jti_of(b)}
    assert all("access_token" not in g for g in grants)

    by_task = client.get("/admin/grants?task=task-a", headers=admin_headers()).get_json()["grants"]
    assert [g["jti"] for g in by_task] == [jti_of(a)]
    assert by_task[0]["task_id"] == "task-a"
    assert by_task[0]["identity_id"] == "acme-deploy"

    by_identity = client.get(
        "/admin/grants?identity=acme-deploy", headers=admin_headers()
    ).get_json()
    assert {g["jti"] for g in by_identity["grants"]} == {jti_of(a), jti_of(b)}
    none = client.get("/admin/grants?identity=acme-release", headers=admin_headers()).get_json()
    assert none["grants"] == []
    by_owner = client.get(
        "/admin/grants?owner=platform-team&limit=1", headers=admin_headers()
    ).get_json()
    assert len(by_owner["grants"]) == 1


def test_filter_by_identity_of_another_identity(client, issued, subject) -> None:
    issued()
    rel = issued(subject(ref="refs/heads/release"), scope="release:write")
    got = client.get("/admin/grants?identity=acme-release", headers=admin_headers()).get_json()[
        "grants"
    ]
    assert [g["jti"] for g in got] == [jti_of(rel)]


@pytest.mark.parametrize("path", ["/admin/grants", "/admin/audit"])
@pytest.mark.parametrize(
    "query",
    [
        "task=a%20b",
        "task=*",
        "task=task%0Ax",
        "task=" + "x" * 200,
        "task=",
        "limit=0",
        "limit=abc",
        "limit=10001",
        "limit=-1",
    ],
)
def test_bad_filter_values_are_400(client, path, query) -> None:
    resp = client.get(f"{path}?{query}", headers=admin_headers())
    assert_oauth_error(resp, 400, "invalid_request")


@pytest.mark.parametrize("query", ["identity=a%20b", "identity=*", "owner=x/y", "owner=-x"])
def test_bad_identity_and_owner_filters_are_400(client, query) -> None:
    assert_oauth_error(
        client.get(f"/admin/grants?{query}", headers=admin_headers()), 400, "invalid_request"
    )


def test_audit_events_by_task(client, issued, exchange) -> None:
    issued(task_id="audit-a")
    issued(task_id="audit-b")
    exchange(task_id="audit-a", scope="admin")  # a denial for audit-a
    events = client.get("/admin/audit?task=audit-a", headers=admin_headers()).get_json()["events"]
    assert {e["task"] for e in events} == {"audit-a"}
    assert [e["outcome"] for e in events] == ["denied", "issued"]  # newest first
    everything = client.get("/admin/audit", headers=admin_headers()).get_json()["events"]
    assert len(everything) == 3


def test_admin_revokes_a_grant(client, issued, monkeypatch) -> None:
    import broker.domain.exchange as exchange_mod

    # Pin the jti's first character to a letter: about 1 random jti in 32 hits the bug below.
    real = exchange_mod.secrets.token_urlsafe
    monkeypatch.setattr(exchange_mod.secrets, "token_urlsafe", lambda n: "A" + real(n)[1:])
    body = issued()
    path = f"/admin/grants/{jti_of(body)}/revoke"
    resp = client.post(path, headers=admin_headers())
    assert resp.status_code == 200 and resp.get_json() == {"revoked": 1}
    assert introspect(client, body["access_token"]).get_json() == {"active": False}
    assert client.post(path, headers=admin_headers()).get_json() == {"revoked": 0}
    events = client.get("/admin/audit", headers=admin_headers()).get_json()["events"]
    revoked = [e for e in events if e["event"] == "grant.revoked"]
    assert revoked[0]["actor"].startswith("admin:")
    assert ADMIN_TOKEN not in str(events)


def test_admin_can_revoke_every_issued_grant(client, issued, monkeypatch) -> None:
    import broker.domain.grant_ids as grant_ids_mod

    real = grant_ids_mod.secrets.token_urlsafe
    # A value token_urlsafe really returns about 3% of the time: a leading '-' or '_'
    # (after the task's bucket, which is hex).
    monkeypatch.setattr(grant_ids_mod.secrets, "token_urlsafe", lambda n: "-" + real(n)[1:])
    body = issued(task_id="ops")
    jti = jti_of(body)
    assert jti[3:5] == "_-"
    resp = client.post(f"/admin/grants/{jti}/revoke", headers=admin_headers())
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"revoked": 1}
