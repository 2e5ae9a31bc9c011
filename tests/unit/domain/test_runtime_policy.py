"""The runtime policy on POST /token: scope classes, Cedar decisions, and human approval
(a round trip across two identities, self-approval refused, expiry, reuse refused)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jwt
import pytest

from broker.domain.approvals import decide_approval
from broker.domain.ports import Approval
from broker.errors import AccessDenied
from tests.support.builders import ADMIN_TOKEN, UNIT_ISSUER, make_config
from tests.support.http import assert_oauth_error
from tests.support.policy import PAY, with_policy
from tests.support.redis import grant_state_keys, stream_events

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(ROOT / "config" / "policies", d)
    return d


@pytest.fixture
def config(policy_dir: Path):  # type: ignore[no-untyped-def]
    return make_config(UNIT_ISSUER, with_policy(policy_dir))


def pending_error(resp: Any, error: str = "authorization_pending") -> dict[str, Any]:
    """A polling answer: the OAuth error shape plus approval_id and interval."""
    assert resp.status_code == 400, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error", "error_description", "approval_id", "interval"}, body
    assert body["error"] == error and resp.headers["Cache-Control"] == "no-store"
    return dict(body)


def refund(exchange: Any, **extra: Any) -> Any:
    form = {"audience": PAY, "scope": "pay:refund", "task_id": "refund-42", "purpose": "refund"}
    return exchange(**{**form, **extra})


def approve(client: Any, approval_id: str, approver: str = "alice", verb: str = "approve") -> Any:
    return client.post(
        f"/admin/approvals/{approval_id}/{verb}",
        json={"approver": approver, "reason": "checked the order"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )


def test_read_is_permitted_and_the_audit_names_the_policy(exchange, svc) -> None:
    resp = exchange(audience=PAY, scope="pay:read")
    assert resp.status_code == 200, resp.json
    issued = [e for e in stream_events(svc) if e.get("outcome") == "issued"][-1]
    assert issued["policies"] == ["baseline-read"]


def test_discovery_never_rides_with_read(exchange, svc) -> None:
    body = assert_oauth_error(
        exchange(audience=PAY, scope="pay:list pay:read"), 400, "invalid_scope"
    )
    assert "discovery" in body["error_description"]
    assert grant_state_keys(svc) == set()


def test_write_needs_a_named_task_and_purpose(exchange, svc) -> None:
    body = assert_oauth_error(exchange(scope="deploy:write"), 400, "invalid_request")
    assert "task" in body["error_description"]
    assert exchange(scope="deploy:write", task_id="t-1", purpose="deploy").status_code == 200


def test_a_policy_denial_names_the_class_never_the_rule(exchange, svc, policy_dir) -> None:
    (policy_dir / "team.cedar").write_text(
        '@id("team-no-deploy-reads")\n'
        'forbid (principal, action == Action::"deploy:read", resource);\n'
    )
    svc.config = make_config(UNIT_ISSUER, with_policy(policy_dir))
    body = assert_oauth_error(exchange(scope="deploy:read"), 400, "invalid_scope")
    assert "policy_forbid" in body["error_description"]
    assert "team-no-deploy-reads" not in str(body)
    denied = [e for e in stream_events(svc) if e.get("outcome") == "denied"][-1]
    assert denied["reason"] == "policy_forbid"
    assert denied["details"]["policies"] == ["team-no-deploy-reads"]
    assert grant_state_keys(svc) == set()


def test_approval_round_trip_across_two_identities(exchange, client, svc, clock) -> None:
    pending = pending_error(refund(exchange))
    approval_id, interval = pending["approval_id"], pending["interval"]
    assert interval == 5 and approval_id.startswith("apr_")
    assert grant_state_keys(svc) == set()
    clock.advance(5)
    pending_error(refund(exchange, approval_id=approval_id))
    # polled again at once: slow down
    pending_error(refund(exchange, approval_id=approval_id), "slow_down")
    resp = approve(client, approval_id)
    assert resp.status_code == 200 and resp.json["state"] == "approved"
    clock.advance(5)
    ok = refund(exchange, approval_id=approval_id)
    assert ok.status_code == 200, ok.json
    claims = jwt.decode(ok.json["access_token"], options={"verify_signature": False})
    assert claims["approval_id"] == approval_id and claims["scope"] == "pay:refund"
    # one token per approval
    clock.advance(5)
    body = assert_oauth_error(refund(exchange, approval_id=approval_id), 400, "invalid_grant")
    assert "already used" in body["error_description"]
    events = [e["event"] for e in stream_events(svc) if e.get("approval_id") == approval_id]
    assert {"approval.requested", "approval.approved", "token.exchange"} <= set(events)


def test_an_approval_is_not_reused_for_other_scopes(exchange, client, clock) -> None:
    approval_id = pending_error(refund(exchange))["approval_id"]
    assert approve(client, approval_id).status_code == 200
    clock.advance(5)
    other = refund(exchange, approval_id=approval_id, scope="pay:refund pay:read")
    body = assert_oauth_error(other, 400, "invalid_grant")
    assert "different request" in body["error_description"]
    other_task = refund(exchange, approval_id=approval_id, task_id="refund-43")
    assert_oauth_error(other_task, 400, "invalid_grant")


def test_a_denied_approval_is_access_denied(exchange, client, clock) -> None:
    approval_id = pending_error(refund(exchange))["approval_id"]
    assert approve(client, approval_id, verb="deny").json["state"] == "denied"
    clock.advance(5)
    assert_oauth_error(refund(exchange, approval_id=approval_id), 400, "access_denied")


def test_an_expired_approval_is_expired_token(exchange, client, clock) -> None:
    approval_id = pending_error(refund(exchange))["approval_id"]
    clock.advance(601)
    assert_oauth_error(refund(exchange, approval_id=approval_id), 400, "expired_token")
    resp = approve(client, approval_id)
    assert resp.status_code == 400 and "expired" in resp.json["error_description"]
    clock.advance(3600)  # the record is gone too
    assert_oauth_error(refund(exchange, approval_id=approval_id), 400, "expired_token")


def test_only_a_configured_human_approver_decides(exchange, client) -> None:
    approval_id = pending_error(refund(exchange))["approval_id"]
    resp = approve(client, approval_id, approver="acme-deploy")  # the requester itself
    assert resp.status_code == 403 and resp.json["error"] == "access_denied"
    no_reason = client.post(
        f"/admin/approvals/{approval_id}/approve",
        json={"approver": "alice"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert no_reason.status_code == 400
    listed = client.get("/admin/approvals", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert [a["id"] for a in listed.json["approvals"]] == [approval_id]


def test_self_approval_is_refused(svc, clock) -> None:
    now = int(clock.now())
    assert svc.approvals is not None
    svc.approvals.create(
        Approval(
            id="apr_" + "a" * 22,
            state="pending",
            identity_id="alice",
            owner="security-team",
            task_id="t",
            audiences=(PAY,),
            scopes=("pay:refund",),
            purpose="p",
            created_at=now,
            expires_at=now + 60,
            interval=5,
        )
    )
    with pytest.raises(AccessDenied, match="own request"):
        decide_approval(
            svc, "apr_" + "a" * 22, approve=True, approver="alice", reason="mine", actor="t"
        )
    assert svc.approvals.get("apr_" + "a" * 22).state == "pending"
