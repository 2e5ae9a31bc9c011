"""The task lifecycle through real gunicorn and an RQ worker (docs/agents.md, "Task
lifecycle"): suspend -> inactive -> resume -> active; fail and cancel end every token within
2 s and the worker revokes every grant; a deadline caps every token; a stranger cannot move
a task, an operator can (HTTP and `errand task`)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from tests.support.clocks import wait_until
from tests.support.stack import EXPIRY_REF, errand_cli, introspect, issue, mint, post_token

pytestmark = pytest.mark.e2e


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def move(stack: Any, http: Any, task: str, action: str, headers: dict[str, str]) -> Any:
    return http.post(f"{stack.url}/tasks/{task}/{action}", headers=headers, timeout=10)


def active(stack: Any, http: Any, token: str) -> bool:
    return bool(introspect(stack, token, http).json()["active"])


def test_suspend_then_resume_keeps_grants(stack, dev_issuer, http):
    task = "lc-pause-" + secrets.token_hex(4)
    token = issue(stack, dev_issuer, http, task_id=task, task_label=["ci_job=42"])["access_token"]

    assert move(stack, http, task, "suspend", bearer(token)).json()["state"] == "suspended"
    assert wait_until(lambda: not active(stack, http, token), timeout=2.0)
    refused = post_token(stack, mint(dev_issuer), http, task_id=task)
    assert refused.status_code == 400 and "suspended" in refused.json()["error_description"]
    shown = http.get(f"{stack.url}/tasks/{task}", headers=bearer(token), timeout=10).json()
    assert shown["state"] == "suspended" and len(shown["grants"]) == 1
    assert shown["labels"] == {"ci_job": "42"}

    assert move(stack, http, task, "resume", bearer(token)).json()["state"] == "running"
    assert active(stack, http, token)
    assert issue(stack, dev_issuer, http, task_id=task)["task_id"] == task  # re-mint


@pytest.mark.parametrize("action", ["fail", "cancel"])
def test_ending_a_task_ends_every_token_and_the_worker_revokes_every_grant(
    stack, dev_issuer, http, action
):
    task = f"lc-{action}-" + secrets.token_hex(4)
    tokens = [issue(stack, dev_issuer, http, task_id=task)["access_token"] for _ in range(3)]
    ended = move(stack, http, task, action, bearer(tokens[0]))
    assert ended.status_code == 200, ended.text

    def all_inactive() -> bool:
        return not any(active(stack, http, t) for t in tokens)

    assert wait_until(all_inactive, timeout=2.0), "a token of the ended task is still active"

    admin = bearer(stack.admin_token)

    def no_live_grants() -> bool:
        shown = http.get(f"{stack.url}/tasks/{task}", headers=admin, timeout=10).json()
        return shown["grants"] == []

    assert wait_until(no_live_grants, timeout=10.0, interval=0.2)
    state = {"fail": "failed", "cancel": "cancelled"}[action]
    events = http.get(
        f"{stack.url}/admin/audit", params={"task": task}, headers=admin, timeout=10
    ).json()["events"]
    revoked = [e["reason"] for e in events if e["event"] == "grant.revoked"]
    assert revoked == [f"task_{state}"] * 3  # each grant revoked for the task's ending
    resumed = move(stack, http, task, "resume", bearer(tokens[1]))
    assert resumed.status_code == 409 and state in resumed.json()["error_description"]


def test_deadline_caps_the_token(stack, dev_issuer, http):
    deadline = int(time.time()) + 90
    body = issue(
        stack,
        dev_issuer,
        http,
        task_id="lc-deadline-" + secrets.token_hex(4),
        task_deadline=str(deadline),
        requested_lifetime="600",
    )
    assert body["expires_in"] <= 91
    exp = introspect(stack, body["access_token"], http).json()["exp"]
    assert exp <= deadline


def test_a_stranger_cannot_move_a_task_and_an_operator_can(stack, dev_issuer, http):
    task = "lc-guard-" + secrets.token_hex(4)
    token = issue(stack, dev_issuer, http, task_id=task)["access_token"]
    stranger = post_token(
        stack, mint(dev_issuer, ref=EXPIRY_REF), http, task_id=task + "-s", scope="deploy:read"
    ).json()["access_token"]
    refused = move(stack, http, task, "cancel", bearer(stranger))
    assert refused.status_code == 403 and refused.json()["error"] == "access_denied"
    assert active(stack, http, token)

    out = errand_cli(stack, "task", "cancel", task, "--operator", "alice")
    assert out.returncode == 0, out.stderr
    assert f"task {task}: running -> cancelled" in out.stdout
    assert wait_until(lambda: not active(stack, http, token), timeout=2.0)
    again = errand_cli(stack, "task", "cancel", task)
    assert "already cancelled" in again.stdout
