"""Suspend, reinstate, offboard, last exchange and the access review (domain and admin API)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.cli.inventory import format_review
from broker.domain.access_review import access_review
from broker.domain.inventory import offboard_identity, suspend_identity
from broker.errors import InvalidRequest, NotFound
from broker.store import keys as rkeys
from tests.support.forms import bearer_form, exchange_form
from tests.support.platforms import DEPLOY, denied, github_token, introspect_body, k8s_token, ok
from tests.support.redis import stream_events

DAY = 86400


def issue(client: Any, wkeys: Any, clock: Any, **extra: Any) -> dict[str, Any]:
    return ok(
        client.post(
            "/token",
            data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY, **extra),
        )
    )


def test_suspension_stops_issuance_and_revokes_live_grants(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, admin_headers: dict[str, str]
) -> None:
    a, b = issue(wclient, wkeys, clock), issue(wclient, wkeys, clock)
    other = ok(wclient.post("/token", data=exchange_form(k8s_token(wkeys.k8s, clock.now()))))
    resp = wclient.post(
        "/admin/identities/gh-deploy/suspend",
        json={"reason": "leaked runner"},
        headers=admin_headers,
    )
    assert resp.status_code == 200 and resp.get_json() == {
        "identity": "gh-deploy",
        "state": "suspended",
        "revoked": 2,
    }
    assert not introspect_body(wclient, a["access_token"])["active"]
    assert not introspect_body(wclient, b["access_token"])["active"]
    assert introspect_body(wclient, other["access_token"])["active"]  # only that identity
    message = denied(
        wclient.post(
            "/token", data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    assert message == "subject_token: the matched identity is suspended"
    trail = stream_events(wsvc)
    suspended = next(e for e in trail if e["event"] == "identity.suspended")
    assert suspended["actor"].endswith(":oncall") and suspended["reason"] == "leaked runner"
    assert (
        len(
            [
                e
                for e in trail
                if e.get("reason") == "identity_suspended" and e["event"] == "grant.revoked"
            ]
        )
        == 2
    )
    assert trail[-1]["reason"] == "identity_suspended" and trail[-1]["outcome"] == "denied"

    resp = wclient.post("/admin/identities/gh-deploy/unsuspend", headers=admin_headers)
    assert resp.get_json() == {"identity": "gh-deploy", "state": "active"}
    issue(wclient, wkeys, clock)


def test_suspension_refuses_the_jwt_bearer_grant_as_invalid_grant(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, admin_headers: dict[str, str]
) -> None:
    wclient.post("/admin/identities/gh-deploy/suspend", headers=admin_headers)
    resp = wclient.post(
        "/token", data=bearer_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
    )
    assert resp.get_json()["error"] == "invalid_grant"


def test_suspension_racing_an_exchange_refuses_the_write(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suspension lands after the exchange read the identity as active and before it
    writes: the grant write checks the suspension atomically and refuses."""
    real = wsvc.store.preflight

    def racing(**kw: Any) -> Any:
        state = real(**kw)  # active at the read
        suspend_identity(wsvc, kw["identity_id"], actor="test", reason="race")
        return state

    monkeypatch.setattr(wsvc.store, "preflight", racing)
    message = denied(
        wclient.post(
            "/token", data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    assert "suspended" in message
    assert wsvc.store.identity_grant_ids("gh-deploy") == []
    issued = [e for e in stream_events(wsvc) if e.get("outcome") == "issued"]
    assert issued == []


def test_suspension_fails_closed_when_redis_is_down(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    token = github_token(wkeys.github, clock.now())
    wsvc.fake_server.connected = False
    resp = wclient.post("/token", data=exchange_form(token, audience=DEPLOY))
    assert resp.status_code == 503 and resp.headers["Retry-After"]


def test_offboarding_is_permanent_and_leaves_the_inventory(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, admin_headers: dict[str, str]
) -> None:
    live = issue(wclient, wkeys, clock)
    resp = wclient.post(
        "/admin/identities/gh-deploy/offboard",
        json={"reason": "repo archived"},
        headers=admin_headers,
    )
    assert resp.get_json() == {"identity": "gh-deploy", "state": "offboarded", "revoked": 1}
    assert not introspect_body(wclient, live["access_token"])["active"]
    assert "offboarded" in denied(
        wclient.post(
            "/token", data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    resp = wclient.post("/admin/identities/gh-deploy/unsuspend", headers=admin_headers)
    assert resp.status_code == 400 and "cannot be undone" in resp.get_json()["error_description"]
    # suspending again is a no-op that keeps it offboarded
    again = wclient.post("/admin/identities/gh-deploy/suspend", headers=admin_headers).get_json()
    assert again["state"] == "offboarded"
    listing = wclient.get("/admin/identities", headers=admin_headers).get_json()
    assert "gh-deploy" not in [i["id"] for i in listing["identities"]]
    report = wclient.get("/admin/identities/review", headers=admin_headers).get_json()
    assert "gh-deploy" not in [r["id"] for r in report["identities"]]
    assert (
        report["offboarded"][0]["id"] == "gh-deploy" and report["offboarded"][0]["in_configuration"]
    )
    # the audit keeps the identity's history
    names = [e["event"] for e in stream_events(wsvc) if e.get("identity") == "gh-deploy"]
    assert "token.exchange" in names and "identity.offboarded" in names


def test_unknown_identities_are_404(wclient: Any, admin_headers: dict[str, str]) -> None:
    resp = wclient.post("/admin/identities/nobody/suspend", headers=admin_headers)
    assert resp.status_code == 404
    assert (
        wclient.post("/admin/identities/bad%20id/suspend", headers=admin_headers).status_code == 404
    )


def test_identity_removed_from_config_with_live_grants_can_still_be_suspended(
    wsvc: Any, wclient: Any, wkeys: Any, clock: Any
) -> None:
    import dataclasses

    issue(wclient, wkeys, clock)
    wsvc.config = dataclasses.replace(
        wsvc.config, identities=tuple(i for i in wsvc.config.identities if i.id != "gh-deploy")
    )
    assert suspend_identity(wsvc, "gh-deploy", actor="t")["revoked"] == 1
    with pytest.raises(NotFound):
        offboard_identity(wsvc, "never-existed", actor="t")


def test_admin_endpoints_need_the_admin_credential(wclient: Any) -> None:
    for method, path in (
        ("get", "/admin/identities"),
        ("get", "/admin/identities/review"),
        ("post", "/admin/identities/gh-deploy/suspend"),
        ("post", "/admin/identities/reload"),
    ):
        resp = getattr(wclient, method)(
            path, headers={"Authorization": "Bearer wrong-wrong-wrong-wrong"}
        )
        assert resp.status_code == 401, path
        assert getattr(wclient, method)(path).status_code == 401


def test_reason_is_bounded(wclient: Any, admin_headers: dict[str, str]) -> None:
    resp = wclient.post(
        "/admin/identities/gh-deploy/suspend", json={"reason": "x\ny"}, headers=admin_headers
    )
    assert resp.status_code == 400


# -- last exchange and the review --------------------------------------------------------
def test_last_exchange_is_recorded_per_identity(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    issue(wclient, wkeys, clock)
    raw = wsvc.redis.hgetall(rkeys.LAST_EXCHANGE)
    assert {k: float(v) for k, v in raw.items()} == {"gh-deploy": clock.now()}


def test_review_flags(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, admin_headers: dict[str, str]
) -> None:
    import dataclasses
    from datetime import UTC, datetime, timedelta

    issue(wclient, wkeys, clock)  # gh-deploy used now
    today = datetime.fromtimestamp(clock.now(), UTC).date()
    identities = []
    for ident in wsvc.config.identities:
        if ident.id == "gl-deploy":
            ident = dataclasses.replace(ident, expires=today + timedelta(days=10))
        if ident.id == "k8s-billing":
            ident = dataclasses.replace(ident, expires=today - timedelta(days=1))
        identities.append(ident)
    wsvc.config = dataclasses.replace(wsvc.config, identities=tuple(identities))
    wclient.post("/admin/identities/spiffe-orders/suspend", headers=admin_headers)

    report = access_review(wsvc, dormant_days=30)
    rows = {r["id"]: r for r in report["identities"]}
    assert rows["gh-deploy"]["live_grants"] == 1 and "dormant" not in rows["gh-deploy"]["flags"]
    assert rows["gh-deploy"]["last_exchange"].startswith("2027-01-15T")
    assert rows["gh-deploy"]["allowances"]["max_ttl_seconds"] == 600
    assert {"never_used", "dormant", "expiring_soon"} <= set(rows["gl-deploy"]["flags"])
    assert "expired" in rows["k8s-billing"]["flags"]
    assert (
        rows["spiffe-orders"]["state"] == "suspended"
        and "suspended" in rows["spiffe-orders"]["flags"]
    )
    assert rows["gh-release"]["flags"] == ["never_used", "dormant"]
    assert "no_expiry" in rows["gh-deploy"]["flags"]
    assert (
        rows["agent-summariser"]["own_keys"]
        and rows["agent-summariser"]["allowances"]["max_ttl_seconds"] == 600
    )

    clock.advance(31 * DAY)
    later = {r["id"]: r for r in access_review(wsvc, dormant_days=30)["identities"]}
    assert "dormant" in later["gh-deploy"]["flags"] and later["gh-deploy"]["live_grants"] == 0
    assert later["gh-deploy"]["days_since_last_exchange"] == 31

    via_api = wclient.get(
        "/admin/identities/review?dormant_days=30&expiring_days=5", headers=admin_headers
    ).get_json()
    assert "expiring_soon" not in {
        f for r in via_api["identities"] if r["id"] == "gl-deploy" for f in r["flags"]
    }
    assert (
        wclient.get("/admin/identities/review?dormant_days=-1", headers=admin_headers).status_code
        == 400
    )
    text = format_review(via_api)
    assert "gh-deploy" in text and "IDENTITY" in text and "dormant" in text
    json.dumps(via_api)  # serialisable as is


def test_review_lists_purposes_and_owners(wsvc: Any) -> None:
    report = access_review(wsvc)
    row = {r["id"]: r for r in report["identities"]}["agent-summariser"]
    assert row["owner"] == "support-team" and row["purpose"] == "summarise support tickets"
    assert row["type"] == "agent" and row["issuers"] == ["agent:agent-summariser"]


def test_unsuspend_of_offboarded_raises(wsvc: Any) -> None:
    from broker.domain.inventory import unsuspend_identity

    offboard_identity(wsvc, "gl-deploy", actor="t")
    with pytest.raises(InvalidRequest):
        unsuspend_identity(wsvc, "gl-deploy", actor="t")
