"""POST /tasks/complete: any live token of a task ends the task; the tombstone holds."""

from __future__ import annotations

import pytest

from broker.jobs import task_job_id
from tests.support.http import assert_oauth_error, introspect
from tests.support.jws import new_es256_key, token_parts
from tests.support.redis import grant_state_keys, stream_events


def complete(client, token: str):
    return client.post("/tasks/complete", headers={"Authorization": f"Bearer {token}"})


def test_needs_a_bearer_token(client, issued) -> None:
    token = issued()["access_token"]
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ):
        resp = client.post("/tasks/complete", headers=headers)
        assert_oauth_error(resp, 401, "invalid_token")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # A token in the body is not a bearer credential either.
    assert client.post("/tasks/complete", data={"token": token}).status_code == 401
    assert introspect(client, token).get_json()["active"] is True


@pytest.mark.parametrize("bad", ["garbage", "a.b.c"])
def test_invalid_token_is_401_invalid_token(client, bad) -> None:
    resp = complete(client, bad)
    assert_oauth_error(resp, 401, "invalid_token")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_subject_token_or_forged_token_cannot_complete(client, issued, subject, svc) -> None:
    import jwt

    body = issued(task_id="guarded")
    claims = token_parts(body["access_token"])[1]
    forged = jwt.encode(
        claims,
        new_es256_key().private_key,
        algorithm="ES256",
        headers={"typ": "at+jwt", "kid": svc.keyring.active.kid},
    )
    assert_oauth_error(complete(client, subject()), 401, "invalid_token")
    assert_oauth_error(complete(client, forged), 401, "invalid_token")
    assert introspect(client, body["access_token"]).get_json()["active"] is True


def test_expired_token_cannot_complete(client, issued, clock) -> None:
    token = issued(requested_lifetime="60")["access_token"]
    clock.advance(61)
    assert_oauth_error(complete(client, token), 401, "invalid_token")


def test_completion_response_audit_and_job(client, issued, svc) -> None:
    token = issued(task_id="job-task")["access_token"]
    resp = complete(client, token)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.get_json() == {"task_id": "job-task", "completed": True}
    (event,) = [e for e in stream_events(svc) if e.get("event") == "task.completed"]
    assert event["task"] == "job-task" and event["identity"] == "acme-deploy"
    assert token not in str(event)
    queue = svc.jobs.queue
    assert task_job_id("job-task") in queue.job_ids
    job = queue.fetch_job(task_job_id("job-task"))
    assert job.func_name == "workers.tasks.cleanup_task"
    assert job.args == ("job-task",)


def test_completing_twice_is_idempotent(client, issued, svc) -> None:
    a = issued(task_id="twice")["access_token"]
    assert complete(client, a).status_code == 200
    # Its tokens are inactive now, but still ours and unexpired: a repeat is harmless.
    assert complete(client, a).status_code == 200
    assert len([e for e in stream_events(svc) if e.get("event") == "task.completed"]) == 1


def test_completing_twice_queues_one_cleanup(client, issued, svc) -> None:
    a = issued(task_id="twice")["access_token"]
    assert complete(client, a).status_code == 200
    assert complete(client, a).status_code == 200
    assert svc.jobs.queue.job_ids.count(task_job_id("twice")) == 1


def test_completed_task_refuses_new_exchanges(client, issued, exchange, svc) -> None:
    token = issued(task_id="done-task")["access_token"]
    assert complete(client, token).status_code == 200
    before = grant_state_keys(svc)
    resp = exchange(task_id="done-task")
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "task" in body["error_description"]
    assert grant_state_keys(svc) == before
    denied = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert denied[-1]["reason"] == "task_completed"
    # Another task is unaffected.
    assert exchange(task_id="other-task").status_code == 200


def test_tombstone_outlives_every_token_of_the_task(client, issued, exchange, clock, svc) -> None:
    token = issued(task_id="long-done")["access_token"]
    assert complete(client, token).status_code == 200
    clock.advance(svc.config.broker.max_token_ttl_seconds + 1)
    assert_oauth_error(exchange(task_id="long-done"), 400, "invalid_request")


def test_redis_down_is_503(client, issued, fake_server) -> None:
    token = issued()["access_token"]
    fake_server.connected = False
    resp = complete(client, token)
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    fake_server.connected = True
    assert introspect(client, token).get_json()["active"] is True


def test_revoked_token_cannot_complete_its_task(client, issued) -> None:
    leaked = issued(task_id="victim")["access_token"]
    other = issued(task_id="victim")["access_token"]
    assert client.post("/revoke", data={"token": leaked}).status_code == 200
    resp = complete(client, leaked)
    assert_oauth_error(resp, 401, "invalid_token")
    assert introspect(client, other).get_json()["active"] is True
