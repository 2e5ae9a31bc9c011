"""The task lifecycle through the broker app on fakeredis (docs/agents.md, "Task
lifecycle"): suspend/resume keep grants but answer inactive while suspended; fail and
cancel end every token like completion; a deadline caps every token and ends the task;
labels bound and validated; only the owner or an operator moves a task."""

from __future__ import annotations

from typing import Any

import pytest

from broker.domain.introspection import introspect as introspect_token
from broker.domain.task_completion import cleanup_task
from broker.domain.task_lifecycle import TaskCaller, transition
from broker.errors import Conflict
from broker.store import keys
from tests.support.forms import deploy_form
from tests.support.http import admin_headers, assert_oauth_error, introspect
from tests.support.redis import grant_state_keys, stream_events

STRANGER_REF = "refs/heads/release"  # matches identity acme-release, not the owner


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def move(client: Any, task: str, action: str, headers: dict[str, str]) -> Any:
    return client.post(f"/tasks/{task}/{action}", headers=headers)


def active(client: Any, token: str) -> bool:
    return bool(introspect(client, token).get_json()["active"])


def test_suspend_keeps_grants_inactive_and_resume_makes_them_active_again(
    client, issued, exchange, svc
) -> None:
    token = issued(task_id="pausable")["access_token"]
    jti_count = len(svc.store.task_grant_ids("pausable"))

    done = move(client, "pausable", "suspend", bearer(token))
    assert done.status_code == 200, done.get_json()
    assert done.get_json() == {
        "task_id": "pausable",
        "state": "suspended",
        "previous": "running",
        "changed": True,
    }
    assert done.headers["Cache-Control"] == "no-store"
    assert not active(client, token)
    assert len(svc.store.task_grant_ids("pausable")) == jti_count  # grants kept
    # Idempotent: the same move again is a 200 no-op.
    again = move(client, "pausable", "suspend", bearer(token))
    assert again.status_code == 200 and again.get_json()["changed"] is False

    refused = exchange(task_id="pausable")
    body = assert_oauth_error(refused, 400, "invalid_request")
    assert "suspended" in body["error_description"]

    shown = client.get("/tasks/pausable", headers=bearer(token)).get_json()
    assert shown["state"] == "suspended" and len(shown["grants"]) == jti_count

    resumed = move(client, "pausable", "resume", bearer(token))
    assert resumed.get_json()["state"] == "running"
    assert active(client, token)  # unexpired tokens are good again
    assert issued(task_id="pausable")["task_id"] == "pausable"  # and the owner re-mints

    events = [e["event"] for e in stream_events(svc) if e.get("task") == "pausable"]
    assert "task.suspended" in events and "task.resumed" in events
    feed = [f["k"] for _, f in svc.redis.xrange(keys.REVOCATION_FEED)]
    assert feed == ["task_suspended", "task_resumed"]


@pytest.mark.parametrize("action", ["complete", "fail", "cancel"])
def test_ending_a_task_revokes_every_grant_and_is_absorbing(
    action, client, issued, exchange, svc
) -> None:
    tokens = [issued(task_id="ending")["access_token"] for _ in range(2)]
    state = {"complete": "completed", "fail": "failed", "cancel": "cancelled"}[action]

    ended = move(client, "ending", action, bearer(tokens[0]))
    assert ended.get_json() == {
        "task_id": "ending",
        "state": state,
        "previous": "running",
        "changed": True,
    }
    assert not any(active(client, t) for t in tokens)
    assert svc.redis.get(keys.task_tombstone("ending")).startswith(state + " ")
    # The same move again: a 200 no-op. Any other: 409, the state named.
    assert move(client, "ending", action, bearer(tokens[1])).get_json()["changed"] is False
    for other in ("resume", "suspend", *({"complete", "fail", "cancel"} - {action})):
        body = assert_oauth_error(
            move(client, "ending", other, bearer(tokens[1])), 409, "invalid_request"
        )
        assert state in body["error_description"]
    refused = assert_oauth_error(exchange(task_id="ending"), 400, "invalid_request")
    assert refused["error_description"] == "task_id: the task is already complete"
    # The clean-up job revokes each grant with the task's own ending as the reason.
    assert cleanup_task("ending", svc) == 2
    reasons = [e.get("reason") for e in stream_events(svc) if e.get("event") == "grant.revoked"]
    assert reasons == [f"task_{state}"] * 2
    shown = client.get("/tasks/ending", headers=admin_headers()).get_json()
    assert shown["state"] == state


def test_stranger_cannot_move_or_see_a_task_and_an_operator_can(
    client, issued, subject, svc
) -> None:
    token = issued(task_id="guarded")["access_token"]
    stranger = client.post(
        "/token",
        data=deploy_form(subject(ref=STRANGER_REF), task_id="strangers-own", scope="release:write"),
    ).get_json()["access_token"]

    # A token of another task is refused for this one, for moving and for looking.
    assert_oauth_error(move(client, "guarded", "cancel", bearer(stranger)), 403, "access_denied")
    assert_oauth_error(client.get("/tasks/guarded", headers=bearer(stranger)), 403, "access_denied")
    assert_oauth_error(move(client, "guarded", "cancel", {}), 401, "invalid_token")
    assert_oauth_error(
        move(client, "guarded", "cancel", bearer("x" * 40)), 401, "invalid_token"
    )  # not the admin credential
    assert active(client, token)

    by_operator = move(client, "guarded", "suspend", admin_headers())
    assert by_operator.get_json()["state"] == "suspended"
    assert not active(client, token)
    events = [e for e in stream_events(svc) if e.get("event") == "task.suspended"]
    assert events[-1]["actor"].startswith("admin:") and events[-1]["identity"] is None
    assert move(client, "guarded", "resume", admin_headers()).get_json()["state"] == "running"
    assert active(client, token)
    assert_oauth_error(move(client, "no-such-task", "suspend", admin_headers()), 404, "not_found")
    assert_oauth_error(client.get("/tasks/no-such-task", headers=admin_headers()), 404, "not_found")
    assert_oauth_error(move(client, "guarded", "explode", admin_headers()), 404, "not_found")


def test_a_planted_grant_of_another_identity_cannot_move_the_task(issued, svc) -> None:
    """The owner check is the recorded owner, in the script, whatever grant a token names."""
    issued(task_id="owned")
    result = svc.store.transition_task(
        "owned",
        target="cancelled",
        identity_id="acme-release",
        audit={"event": "x"},
        now=int(svc.clock.now()),
        tombstone_seconds=3600,
        suspension_seconds=3600,
        feed_expiry=0,
        skew_seconds=0,
    )
    assert result.outcome == "foreign"
    assert not svc.redis.exists(keys.task_tombstone("owned"))


def test_deadline_caps_every_token_and_ends_the_task(client, issued, exchange, clock, svc) -> None:
    deadline = int(clock.now()) + 120
    first = issued(task_id="bounded", task_deadline=str(deadline), requested_lifetime="600")
    assert first["expires_in"] == 120  # capped by the deadline, not the policy's 600
    clock.advance(60)
    renewal = issued(task_id="bounded", requested_lifetime="600")  # no renewal extends it
    assert renewal["expires_in"] == 60
    # A deadline is set once: a renewal may repeat it, never move it.
    assert issued(task_id="bounded", task_deadline=str(deadline))["expires_in"] == 60
    moved = exchange(task_id="bounded", task_deadline=str(deadline + 600))
    assert assert_oauth_error(moved, 400, "invalid_request")["error_description"].startswith(
        "task_deadline"
    )
    clock.advance(60)
    late = assert_oauth_error(exchange(task_id="bounded"), 400, "invalid_request")
    assert "deadline" in late["error_description"]
    shown = client.get("/tasks/bounded", headers=admin_headers()).get_json()
    assert shown["state"] == "expired" and shown["deadline"] == deadline
    # Expired is terminal: nothing moves it, a token left alive (none is) or not.
    assert_oauth_error(move(client, "bounded", "resume", admin_headers()), 409, "invalid_request")
    # Kept past the deadline for a tombstone period, so the name is not reopened.
    assert svc.redis.ttl(keys.task_state("bounded")) > 0
    assert svc.redis.ttl(keys.task_owner("bounded")) > 0


def test_deadline_must_be_ahead_and_within_retention(exchange, clock, svc) -> None:
    now = int(clock.now())
    for bad in (now - 1, now, now + svc.config.broker.task_retention_seconds + 1):
        resp = exchange(task_id=f"bad-{bad}", task_deadline=str(bad))
        assert assert_oauth_error(resp, 400, "invalid_request")["error_description"].startswith(
            "task_deadline"
        )
    assert_oauth_error(exchange(task_deadline="soon"), 400, "invalid_request")
    assert grant_state_keys(svc) == set()


def test_labels_are_recorded_bounded_and_fixed(client, issued, exchange, svc) -> None:
    labels = ["ci_job=12345", "mcp.task=6f1c-77/ab", "sandbox=run:9"]
    token = issued(task_id="labelled", task_label=labels)["access_token"]
    shown = client.get("/tasks/labelled", headers=bearer(token)).get_json()
    assert shown["labels"] == {"ci_job": "12345", "mcp.task": "6f1c-77/ab", "sandbox": "run:9"}
    assert shown["owner"] == "acme-deploy" and shown["chain"] == []
    assert [sorted(g) for g in shown["grants"]] == [
        ["audiences", "exp", "iat", "identity", "jti", "scopes"]
    ]
    assert token not in str(shown)
    assert issued(task_id="labelled", task_label=labels[::-1])["task_id"] == "labelled"
    changed = exchange(task_id="labelled", task_label=["ci_job=999"])
    assert_oauth_error(changed, 400, "invalid_request")
    for bad in (
        ["Bad=1"],
        ["ci_job="],
        ["ci_job=a b"],
        ["nokey"],
        ["a=1", "a=2"],
        [f"k{i}=v" for i in range(9)],
        ["k=" + "v" * 129],
    ):
        resp = exchange(task_id="bad-labels", task_label=bad)
        assert assert_oauth_error(resp, 400, "invalid_request")["error_description"].startswith(
            "task_label"
        ), bad
    assert not svc.redis.exists(keys.task_state("bad-labels"))


def test_a_plain_task_has_no_lifecycle_record(issued, svc) -> None:
    """Memory: only tasks with a deadline, labels or a suspension pay for a record."""
    issued(task_id="plain")
    assert not svc.redis.exists(keys.task_state("plain"))


def test_suspension_between_preflight_and_write_refuses_the_write(
    exchange, svc, monkeypatch
) -> None:
    """A real competing move injected between the exchange's read and its atomic write."""
    first = exchange(task_id="racing").get_json()["access_token"]
    real = svc.store.preflight

    def preflight(**kw: Any) -> Any:
        state = real(**kw)
        transition("racing", "suspend", TaskCaller.operator("admin:test"), svc)
        return state

    monkeypatch.setattr(svc.store, "preflight", preflight)
    before = len(svc.store.task_grant_ids("racing"))
    resp = exchange(task_id="racing")
    assert_oauth_error(resp, 400, "invalid_request")
    assert len(svc.store.task_grant_ids("racing")) == before  # nothing written
    assert introspect_token(first, svc) == {"active": False}
    monkeypatch.undo()
    transition("racing", "cancel", TaskCaller.operator("admin:test"), svc)
    with pytest.raises(Conflict):
        transition("racing", "resume", TaskCaller.operator("admin:test"), svc)
