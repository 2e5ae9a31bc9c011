"""Task completion through the real worker, seen through HTTP and the operator CLI."""

from __future__ import annotations

import json
import secrets

import pytest

from broker.store import keys as K
from tests.support.clocks import wait_until
from tests.support.stack import errand_cli, introspect, issue, mint, post_token

pytestmark = pytest.mark.e2e


def test_completing_a_task_ends_every_token_of_it(stack, dev_issuer, http, peek):
    task = "task-b-" + secrets.token_hex(4)
    other_task = "task-b-other-" + secrets.token_hex(4)
    mine = [issue(stack, dev_issuer, http, task_id=task)["access_token"] for _ in range(3)]
    other = issue(stack, dev_issuer, http, task_id=other_task)["access_token"]
    assert all(introspect(stack, t, http).json()["active"] is True for t in [*mine, other])

    listed = errand_cli(stack, "grants", "--task", task, "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["grants"]) == 3

    done = http.post(
        stack.url + "/tasks/complete", headers={"Authorization": f"Bearer {mine[1]}"}, timeout=10
    )
    assert done.status_code == 200, done.text
    assert done.json() == {"task_id": task, "completed": True}
    assert done.headers["Cache-Control"] == "no-store"

    def all_inactive() -> bool:
        return all(introspect(stack, t, http).json() == {"active": False} for t in mine)

    assert wait_until(all_inactive, timeout=2.0), "a token of the completed task is still active"
    assert introspect(stack, other, http).json()["active"] is True

    # The worker removes the task's grants: the operator view shows none live.
    def no_live_grants() -> bool:
        out = errand_cli(stack, "grants", "--task", task)
        return out.returncode == 0 and out.stdout.strip().endswith("0 live grant(s)")

    assert wait_until(no_live_grants, timeout=10.0, interval=0.3), errand_cli(
        stack, "grants", "--task", task
    ).stdout
    jtis = [
        g["jti"]
        for g in json.loads(errand_cli(stack, "grants", "--task", other_task, "--json").stdout)[
            "grants"
        ]
    ]
    assert len(jtis) == 1
    assert peek.keys(K.task_index(task)) == []
    assert peek.zscore(K.COMPLETING, task) is None

    # A completed task stays completed: a new exchange naming it is refused.
    late = post_token(stack, mint(dev_issuer), http, task_id=task)
    assert late.status_code == 400
    assert late.json()["error"] == "invalid_request"
    assert "complete" in late.json()["error_description"]

    # The audit trail, oldest first: three issuances, the completion, each completed token
    # introspected (audited once per token and window), three revocations by the worker, and
    # the refused late exchange.
    audit = errand_cli(stack, "audit", task)
    assert audit.returncode == 0, audit.stderr
    lines = audit.stdout.strip().splitlines()
    assert sum("token.exchange" in line and "issued" in line for line in lines) == 3
    assert sum("task.completed" in line for line in lines) == 1
    assert sum("token.introspected" in line for line in lines) == 3
    assert sum("grant.revoked" in line and "task_completed" in line for line in lines) == 3
    assert (
        sum(
            "token.exchange" in line and "denied" in line and "task_completed" in line
            for line in lines
        )
        == 1
    )
    # and the task's signed proof, once the clean-up job has revoked every grant of it
    assert sum("task.proved" in line for line in lines) == 1
    assert lines[-1] == f"12 event(s) for task {task}"
    assert not any(t in audit.stdout for t in mine), "a token leaked into the audit trail"
    events = json.loads(errand_cli(stack, "audit", task, "--json").stdout)
    kinds = [(e["event"], e.get("outcome")) for e in events]
    assert kinds[:4] == [("token.exchange", "issued")] * 3 + [("task.completed", "completed")]
    assert kinds[-1] == ("token.exchange", "denied")
    assert all(e.get("task") == task for e in events)


def test_completion_needs_a_live_token_of_ours(stack, dev_issuer, http):
    no_auth = http.post(stack.url + "/tasks/complete", timeout=10)
    assert no_auth.status_code == 401
    assert no_auth.json()["error"] == "invalid_token"
    assert no_auth.headers["Cache-Control"] == "no-store"
    subject = mint(dev_issuer)  # someone else's token is not ours
    foreign = http.post(
        stack.url + "/tasks/complete", headers={"Authorization": f"Bearer {subject}"}, timeout=10
    )
    assert foreign.status_code == 401
    assert foreign.json()["error"] == "invalid_token"


def test_operator_endpoints_need_the_admin_credential(stack, http):
    none = http.get(stack.url + "/admin/grants", timeout=10)
    assert none.status_code == 401
    wrong = http.get(
        stack.url + "/admin/grants", headers={"Authorization": "Bearer " + "x" * 40}, timeout=10
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_token"
    ok = http.get(
        stack.url + "/admin/grants",
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    )
    assert ok.status_code == 200
