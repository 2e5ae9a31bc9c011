"""client.task(): renewal margins derived from expires_in, renewal for the SAME task with a
fresh subject token, completion on exit (also when the body raises), no token in reprs/logs."""

from __future__ import annotations

import logging

import pytest

from errand_client import CompletionError, ErrandClient, RetryPolicy, refresh_margin

AUD = "https://deploy.acme.example"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counter_provider():  # type: ignore[no-untyped-def]
    n = {"i": 0}

    def provider() -> str:
        n["i"] += 1
        return f"hdr.subject{n['i']}.sig"

    return provider


@pytest.mark.parametrize(
    ("expires_in", "margin"),
    [(300, 60), (3600, 720), (900, 180), (20, 5), (10, 5), (4, 2), (1, 0.5)],
)
def test_refresh_margin(expires_in: int, margin: float) -> None:
    assert refresh_margin(expires_in) == margin


def test_margin_is_never_a_fixed_window() -> None:
    # A 10-15 minute fixed window would renew a 5-minute token on every call.
    for lifetime in (60, 300, 600):
        assert refresh_margin(lifetime) < lifetime / 2 + 1e-9
        assert refresh_margin(lifetime) <= 0.2 * lifetime or refresh_margin(lifetime) == 5


def test_five_minute_token_is_not_renewed_on_every_call(broker, sleeps) -> None:
    clock = Clock()
    client = ErrandClient(broker.url, counter_provider(), clock=clock, sleep=sleeps)
    with client.task("summarise-tickets", audience=AUD, scopes=["deploy:read"]) as tok:
        first = tok.access_token
        for step in range(0, 240, 10):  # 4 minutes of calls: 60 s margin not reached
            clock.now = 1_800_000_000.0 + step
            assert tok.access_token == first
        assert len(broker.token_requests) == 1
        clock.now = 1_800_000_000.0 + 241  # inside the last 20%
        second = tok.access_token
        assert second != first and tok.renewals == 1
        assert tok.headers() == {"Authorization": f"Bearer {second}"}
        assert tok.expires_at == pytest.approx(clock.now + 300)
        clock.now += 100
        assert tok.access_token == second  # the new token has its own margin
    assert len(broker.token_requests) == 2
    first_req, renewal = broker.token_requests
    assert renewal["task_id"] == first_req["task_id"]  # the SAME task
    assert renewal["subject_token"] != first_req["subject_token"]  # a fresh subject token
    assert renewal["audience"] == [AUD] and renewal["scope"] == ["deploy:read"]
    assert first_req["task_id"][0].startswith("summarise-tickets-")


def test_task_completes_on_exit(broker, sleeps) -> None:
    client = ErrandClient(broker.url, counter_provider(), sleep=sleeps)
    with client.task("job", audience=AUD, purpose="nightly", lifetime=120) as tok:
        token = tok.access_token
        assert tok.task_id.startswith("job-")
    assert broker.complete_requests == [f"Bearer {token}"]
    assert broker.token_requests[0]["purpose"] == ["nightly"]
    assert broker.token_requests[0]["requested_lifetime"] == ["120"]


def test_task_is_marked_failed_when_the_body_raises(broker, sleeps) -> None:
    client = ErrandClient(broker.url, counter_provider(), sleep=sleeps)
    labels = {"ci_job": "12345"}
    with (
        pytest.raises(ZeroDivisionError),
        client.task("job", audience=AUD, deadline=1_900_000_000, labels=labels) as tok,
    ):
        token = tok.access_token
        _ = 1 / 0
    assert broker.complete_requests == []
    assert broker.task_moves == [(f"/tasks/{tok.task_id}/fail", f"Bearer {token}")]
    assert broker.token_requests[0]["task_deadline"] == ["1900000000"]
    assert broker.token_requests[0]["task_label"] == ["ci_job=12345"]


def test_suspend_and_resume_move_the_task(broker, sleeps) -> None:
    client = ErrandClient(broker.url, counter_provider(), sleep=sleeps)
    with client.task("job", audience=AUD) as tok:
        assert client.suspend(tok)["state"] == "suspended"
        assert client.resume(tok)["state"] == "resume"
    paths = [p for p, _ in broker.task_moves]
    assert paths == [f"/tasks/{tok.task_id}/suspend", f"/tasks/{tok.task_id}/resume"]
    broker.complete_script = [(409, {"error": "invalid_request", "error_description": "x"}, {})]
    assert client.cancel(tok) is None  # the task already ended another way


def test_completion_failure_does_not_mask_the_body_exception(broker, sleeps, caplog) -> None:
    broker.complete_script = [(500, {"error": "server_error", "error_description": "boom"}, {})]
    client = ErrandClient(broker.url, counter_provider(), sleep=sleeps)
    caplog.set_level(logging.INFO, logger="errand_client")
    with pytest.raises(KeyError), client.task("job", audience=AUD):
        raise KeyError("the body's own error")
    assert "could not mark it failed" in caplog.text
    assert not any(t in caplog.text for t in broker.issued)


def test_completion_failure_on_clean_exit_raises(broker, sleeps) -> None:
    broker.complete_script = [broker.unavailable("1")] * 2
    client = ErrandClient(
        broker.url, counter_provider(), retry=RetryPolicy(max_attempts=2), sleep=sleeps
    )
    with (
        pytest.raises(CompletionError, match="could not complete"),
        client.task("job", audience=AUD),
    ):
        pass
    assert len(broker.complete_requests) == 2  # 503 on completion is retried too


def test_already_complete_is_fine(broker, sleeps) -> None:
    broker.complete_script = [(401, {"error": "invalid_token", "error_description": "gone"}, {})]
    client = ErrandClient(broker.url, counter_provider(), sleep=sleeps)
    with client.task("job", audience=AUD):
        pass
    assert len(broker.complete_requests) == 1


def test_failed_renewal_keeps_a_still_valid_token(broker, sleeps, caplog) -> None:
    clock = Clock()
    client = ErrandClient(
        broker.url, counter_provider(), clock=clock, retry=RetryPolicy(max_attempts=2), sleep=sleeps
    )
    with client.task("job", audience=AUD) as tok:
        first = tok.access_token
        broker.token_script = [broker.unavailable("1")] * 2
        clock.now += 250
        assert tok.access_token == first  # renewal failed, token still valid for 50 s
        assert "renewal failed" in caplog.text
        assert len(broker.token_requests) == 3
        clock.now += 1
        assert tok.access_token == first  # paused: no hammering right after a failure
        assert len(broker.token_requests) == 3
        clock.now += 10
        assert tok.access_token != first  # the broker is back
    assert not any(t in caplog.text for t in broker.issued)


def test_no_token_in_reprs_or_logs(broker, sleeps, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = ErrandClient(broker.url, counter_provider(), sleep=sleeps)
    issued = client.exchange(audience=AUD)
    with client.task("job", audience=AUD) as tok:
        token = tok.access_token
        assert token not in repr(tok) and token not in str(tok)
        tok.renew()
    assert issued.access_token not in repr(issued)
    subject_tokens = broker.subject_tokens()
    assert subject_tokens and not any(s in repr(client) for s in subject_tokens)
    assert not any(t in caplog.text for t in broker.issued)


def test_task_name_must_be_a_safe_id(broker) -> None:
    client = ErrandClient(broker.url, counter_provider())
    with pytest.raises(ValueError), client.task("no spaces please", audience=AUD):
        pass
    assert broker.token_requests == []
