"""End to end: the runtime policy on a real gunicorn broker and RQ worker, over HTTP.

A forbid refuses with its class only; the approval round trip across two identities through
the admin API (pending, slow_down, approved by a person with a reason, the token carrying
the approval, reuse refused); self-approval refused; a policy file broken under the running
broker keeps the old policies (and /readyz says so); a widening contract version revokes the
old grants through the real worker."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
import yaml

from broker.dev.issuer import DevIssuer, load_or_create_key
from tests.support.forms import exchange_form
from tests.support.redis import RedisDbs, audit_events
from tests.support.stack import ROOT, Stack, introspect, mint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAY = "https://payments.acme.example"
SERVICE = "acme-app-deploy"
HTTP = requests.Session()
HTTP.trust_env = False  # 127.0.0.1 only

TEAM_POLICY = f"""// The payments team: permit within the baseline, and never a delete from CI.
@id("payments-team")
permit (principal, action, resource);

@id("payments-no-deletes-from-ci")
forbid (principal, action == Action::"pay:delete", resource == Audience::"{PAY}")
when {{ principal.type == "service" }};
"""


class PolicyStack:
    def __init__(self, stack: Stack, github: DevIssuer, sso: DevIssuer, peek: redis.Redis):
        self.stack, self.github, self.sso, self.peek = stack, github, sso, peek
        self.policy_dir = stack.workdir / "policies"

    def service_token(self) -> str:
        return mint(self.github)

    def human_token(self, who: str = "alice") -> str:
        now = int(time.time())
        claims = {
            "iss": self.sso.issuer,
            "aud": "errand-e2e",
            "sub": f"{who}@acme.example",
            "jti": f"{who}-{time.monotonic_ns()}",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        return str(self.sso.mint(claims))

    def exchange(self, token: str, **fields: Any) -> requests.Response:
        return HTTP.post(self.stack.url + "/token", data=exchange_form(token, **fields), timeout=10)

    def admin(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.stack.admin_token}", "Connection": "close"}
        return HTTP.request(method, self.stack.url + path, headers=headers, timeout=30, **kw)

    def edit_config(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        path = self.stack.config_file
        doc = yaml.safe_load(path.read_text())
        mutate(doc)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(path)


def configure(doc: dict[str, Any], sso: str, policy_dir: Path) -> None:
    doc["broker"]["config_reload_seconds"] = 1
    doc["issuers"].append(
        {
            "id": "sso",
            "issuer": sso,
            "audience": "errand-e2e",
            "human": True,
            "algorithms": ["ES256"],
            "refresh_cooldown_seconds": 5,
        }
    )
    service = next(i for i in doc["identities"] if i["id"] == SERVICE)
    service["allow"]["audiences"].append(PAY)
    service["allow"]["scopes"] += ["pay:read", "pay:delete", "pay:refund"]
    for who in ("alice", "bob"):
        doc["identities"].append(
            {
                "id": who,
                "type": "human",
                "owner": "security-team",
                "purpose": "approves high-impact requests",
                "match": [{"issuer": "sso", "claims": {"sub": f"{who}@acme.example"}}],
                "allow": {"audiences": [PAY], "scopes": ["pay:read", "pay:refund"]},
            }
        )
    doc["audiences"] = [
        {
            "id": PAY,
            "sensitivity": "high",
            "contract_version": "1",
            "scopes": {
                "read": ["pay:read"],
                "write": ["pay:delete"],
                "high_impact": ["pay:refund"],
            },
        }
    ]
    doc["policy"] = {
        "dir": str(policy_dir),
        "approvers": ["alice", "bob"],
        "approval_ttl_seconds": 600,
        "approval_poll_interval_seconds": 1,
    }


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: DevIssuer
) -> Iterator[PolicyStack]:
    url = redis_dbs.url("e2e-policy")
    workdir = tmp_path_factory.mktemp("policy")
    sso = DevIssuer(load_or_create_key(workdir / "sso.pem")).start()
    stack = Stack(workdir / "stack", url, dev_issuer.issuer)
    policy_dir = stack.workdir / "policies"
    shutil.copytree(ROOT / "config" / "policies", policy_dir)
    (policy_dir / "payments.cedar").write_text(TEAM_POLICY)
    doc = yaml.safe_load(stack.config_file.read_text())
    configure(doc, sso.issuer, policy_dir)
    stack.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    peek = redis.Redis.from_url(url, decode_responses=True)
    stack.start()
    try:
        yield PolicyStack(stack, dev_issuer, sso, peek)
    finally:
        stack.stop()
        sso.stop()
        peek.close()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(url).flushdb()


def until(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("timed out")


def error_of(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code in (400, 403), resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    return dict(resp.json())


REFUND = {"audience": PAY, "scope": "pay:refund", "task_id": "refund-42", "purpose": "refund 42"}


def test_a_forbid_refuses_with_its_class_only(world: PolicyStack) -> None:
    assert world.exchange(world.service_token(), audience=PAY, scope="pay:read").ok
    resp = world.exchange(
        world.service_token(), audience=PAY, scope="pay:delete", task_id="t-1", purpose="cleanup"
    )
    body = error_of(resp)
    assert body["error"] == "invalid_scope" and "(policy_forbid)" in body["error_description"]
    assert "payments-no-deletes" not in resp.text and "principal" not in resp.text
    denied = [e for e in audit_events(world.peek) if e.get("reason") == "policy_forbid"]
    assert denied[-1]["details"]["policies"] == ["payments-no-deletes-from-ci"]


def test_the_approval_round_trip_across_two_identities(world: PolicyStack) -> None:
    pending = error_of(world.exchange(world.service_token(), **REFUND))
    assert pending["error"] == "authorization_pending"
    approval_id, interval = pending["approval_id"], pending["interval"]
    assert interval == 1 and "policy" not in pending["error_description"].lower()
    tokens = world.service_token(), world.service_token()
    started = time.monotonic()
    first = error_of(world.exchange(tokens[0], **REFUND, approval_id=approval_id))
    again = error_of(world.exchange(tokens[1], **REFUND, approval_id=approval_id))
    window = time.monotonic() - started
    assert first["error"] == "authorization_pending"
    if window < interval:  # the broker saw the two polls less than an interval apart
        assert again["error"] == "slow_down"

    listed = world.admin("GET", "/admin/approvals").json()["approvals"]
    assert [a["id"] for a in listed] == [approval_id] and listed[0]["identity_id"] == SERVICE
    no_reason = world.admin(
        "POST", f"/admin/approvals/{approval_id}/approve", json={"approver": "alice"}
    )
    assert no_reason.status_code == 400
    ok = world.admin(
        "POST",
        f"/admin/approvals/{approval_id}/approve",
        json={"approver": "alice", "reason": "order 42 checked"},
    )
    assert ok.status_code == 200 and ok.json()["state"] == "approved", ok.text

    def poll() -> dict[str, Any] | None:
        time.sleep(interval + 0.1)  # the client honours the interval, as RFC 8628 asks
        resp = world.exchange(world.service_token(), **REFUND, approval_id=approval_id)
        if resp.status_code == 200:
            return dict(resp.json())
        assert resp.json()["error"] == "slow_down", resp.text
        return None

    token = until(poll)
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["approval_id"] == approval_id and claims["scope"] == "pay:refund"
    assert introspect(world.stack, token["access_token"]).json()["active"] is True

    def reused() -> dict[str, Any] | None:
        time.sleep(interval + 0.1)
        resp = world.exchange(world.service_token(), **REFUND, approval_id=approval_id)
        body = error_of(resp)
        return body if body["error"] != "slow_down" else None

    again = until(reused)
    assert again["error"] == "invalid_grant" and "already used" in again["error_description"]
    events = {e["event"] for e in audit_events(world.peek)}
    assert {"approval.requested", "approval.approved"} <= events


def test_self_approval_is_refused(world: PolicyStack) -> None:
    pending = error_of(world.exchange(world.human_token("alice"), **{**REFUND, "task_id": "r-7"}))
    assert pending["error"] == "authorization_pending", pending
    approval_id = pending["approval_id"]
    own = world.admin(
        "POST",
        f"/admin/approvals/{approval_id}/approve",
        json={"approver": "alice", "reason": "mine"},
    )
    assert own.status_code == 403 and own.json()["error"] == "access_denied"
    shown = world.admin("GET", f"/admin/approvals/{approval_id}").json()
    assert shown["state"] == "pending"
    denied = world.admin(
        "POST",
        f"/admin/approvals/{approval_id}/deny",
        json={"approver": "bob", "reason": "no ticket"},
    )
    assert denied.status_code == 200 and denied.json()["state"] == "denied"


def reload_status(world: PolicyStack, predicate: Callable[[dict[str, Any]], bool]) -> bool:
    """Each gunicorn worker reloads on its own: wait until both report `predicate`."""
    seen: dict[int, bool] = {}

    def check() -> bool:
        status = world.admin("GET", "/admin/identities/reload").json()
        seen[status["pid"]] = bool(predicate(status))
        return len(seen) >= 2 and all(seen.values())

    return bool(until(check, timeout=30.0))


def test_a_failed_policy_reload_keeps_the_old_policies(world: PolicyStack) -> None:
    team = world.policy_dir / "payments.cedar"
    team.write_text(TEAM_POLICY + "\nforbid (principal, action, resource) when { nonsense };\n")
    assert reload_status(world, lambda s: not s["ok"] and "payments.cedar" in (s["error"] or ""))
    ready = HTTP.get(world.stack.url + "/readyz", headers={"Connection": "close"}, timeout=10)
    assert ready.status_code == 503 and ready.json()["config_reload"] == "refused"
    for _ in range(4):  # every worker still decides with the policies it had
        assert world.exchange(world.service_token(), audience=PAY, scope="pay:read").ok
        body = error_of(
            world.exchange(
                world.service_token(), audience=PAY, scope="pay:delete", task_id="t", purpose="p"
            )
        )
        assert "(policy_forbid)" in body["error_description"]
    team.write_text(TEAM_POLICY)  # fixed
    assert reload_status(world, lambda s: s["ok"])
    assert HTTP.get(world.stack.url + "/readyz", timeout=10).status_code == 200


def test_a_widening_contract_revokes_the_old_grants_through_the_worker(
    world: PolicyStack,
) -> None:
    old = world.exchange(world.service_token(), audience=PAY, scope="pay:read").json()
    assert introspect(world.stack, old["access_token"]).json()["active"] is True

    def widen(doc: dict[str, Any]) -> None:
        doc["audiences"][0].update(contract_version="2", contract_widening=True)

    world.edit_config(widen)
    assert reload_status(world, lambda s: s["ok"])
    until(lambda: not introspect(world.stack, old["access_token"]).json()["active"])
    fresh = world.exchange(world.service_token(), audience=PAY, scope="pay:read").json()
    assert introspect(world.stack, fresh["access_token"]).json()["active"] is True
    events = audit_events(world.peek)
    widened = [e for e in events if e["event"] == "contract.widened"]
    assert widened and widened[-1]["old_version"] == "1" and widened[-1]["new_version"] == "2"
    until(lambda: any(e["event"] == "contract.revoked" for e in audit_events(world.peek)))
