"""broker/domain/revocation.py: cleanup_task removes every grant of a task, idempotently."""

from __future__ import annotations

import pytest

from broker.domain.audit_hmac import jti_hmac
from broker.domain.task_completion import cleanup_task, complete_task
from broker.domain.token_revocation import revoke_grant
from broker.errors import InvalidToken
from broker.store import keys
from tests.support.http import introspect
from tests.support.jws import token_parts
from tests.support.redis import stream_events


def jti_of(body) -> str:
    return str(token_parts(body["access_token"])[1]["jti"])


def test_cleanup_task_removes_every_grant_and_is_idempotent(client, issued, svc) -> None:
    a = issued(task_id="clean-me")
    b = issued(task_id="clean-me", scope="deploy:read")
    other = issued(task_id="keep-me")
    complete_task(a["access_token"], svc)
    r = svc.redis
    assert r.zscore(keys.COMPLETING, "clean-me") is not None

    assert cleanup_task("clean-me", svc) == 2
    for body in (a, b):
        assert not r.exists(keys.grant(jti_of(body)))
        assert r.zscore(keys.identity_index("acme-deploy"), jti_of(body)) is None
    assert r.zcard(keys.task_index("clean-me")) == 0
    assert r.zscore(keys.COMPLETING, "clean-me") is None
    expiry_members = r.zrange(keys.EXPIRY_INDEX, 0, -1)
    assert [m.split(" ")[0] for m in expiry_members] == [jti_of(other)]

    revoked = [e for e in stream_events(svc) if e.get("event") == "grant.revoked"]
    assert sorted(e["jti_hmac"] for e in revoked) == sorted(
        [jti_hmac(jti_of(a)), jti_hmac(jti_of(b))]
    )
    assert {e["reason"] for e in revoked} == {"task_completed"}
    assert {e["actor"] for e in revoked} == {"worker"}

    # Twice: nothing more to do, nothing more audited, no error.
    assert cleanup_task("clean-me", svc) == 0
    assert len([e for e in stream_events(svc) if e.get("event") == "grant.revoked"]) == 2
    # The other task is untouched, the completed one stays inactive.
    assert introspect(client, other["access_token"]).get_json()["active"] is True
    assert introspect(client, a["access_token"]).get_json()["active"] is False


def test_cleanup_of_an_unknown_task_is_a_no_op(svc) -> None:
    assert cleanup_task("never-existed", svc) == 0


def test_cleanup_after_a_single_revocation_skips_it(issued, svc) -> None:
    a = issued(task_id="partly")
    b = issued(task_id="partly")
    assert revoke_grant(jti_of(a), svc, reason="revoked", actor="holder") is True
    complete_task(b["access_token"], svc)
    assert cleanup_task("partly", svc) == 1


def test_revoke_grant_of_an_unknown_jti_is_false(svc) -> None:
    assert revoke_grant("no-such-jti", svc, reason="operator", actor="admin") is False
    assert [e for e in stream_events(svc) if e.get("event") == "grant.revoked"] == []


def test_complete_task_refuses_tokens_that_are_not_ours(svc, subject) -> None:
    with pytest.raises(InvalidToken):
        complete_task(subject(), svc)
    with pytest.raises(InvalidToken):
        complete_task("garbage", svc)


def test_complete_task_survives_a_failed_enqueue(issued, svc, monkeypatch) -> None:
    body = issued(task_id="no-queue")

    def fail(task_id: str) -> None:
        raise ConnectionError("rq down")

    monkeypatch.setattr(svc.jobs, "schedule_task_cleanup", fail)
    assert complete_task(body["access_token"], svc) == {"task_id": "no-queue", "completed": True}
    # The stale-completion list lets the sweeper re-enqueue the clean-up later.
    assert svc.store.stale_completions(svc.clock.now() + 1) == ["no-queue"]
