"""The retry policy: only 503 and connection errors are retried, with a fresh subject token
per attempt, Retry-After honoured but capped, short per-attempt timeouts."""

from __future__ import annotations

import socket
import time

import pytest

from errand_client import ErrandClient, RetriesExhausted, RetryPolicy, TokenRequestError
from errand_client.retry import parse_retry_after

AUD = "https://deploy.acme.example"


def fresh_provider():  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def provider() -> str:
        token = f"hdr.subject{len(calls)}.sig"
        calls.append(token)
        return token

    provider.calls = calls  # type: ignore[attr-defined]
    return provider


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(
        10.0
    )
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retry_after_seconds=10)
    assert policy.delay(1, 3) == 3
    assert policy.delay(1, 3600) == 10
    assert 0.25 <= policy.delay(1, None) <= 0.5  # jittered backoff after a connection error


def test_503_is_retried_with_a_fresh_subject_token_each_time(broker, sleeps) -> None:
    broker.token_script = [broker.unavailable("2"), broker.unavailable("120")]
    provider = fresh_provider()
    client = ErrandClient(broker.url, provider, sleep=sleeps)
    issued = client.exchange(audience=AUD, scopes=["deploy:write"])
    assert issued.access_token == broker.issued[-1]
    assert len(broker.token_requests) == 3
    subjects = broker.subject_tokens()
    assert subjects == provider.calls and len(set(subjects)) == 3  # never re-sent
    assert sleeps == [2.0, 10.0]  # Retry-After honoured, then capped
    # every attempt for the same task id, so a lost answer's grant dies with the task
    assert len({r["task_id"][0] for r in broker.token_requests}) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "invalid_request"),
        (400, "invalid_grant"),
        (400, "invalid_target"),
        (400, "invalid_scope"),
        (401, "invalid_client"),
        (500, "server_error"),
    ],
)
def test_terminal_errors_are_not_retried(broker, sleeps, status, error) -> None:
    broker.token_script = [(status, {"error": error, "error_description": "no"}, {})]
    client = ErrandClient(broker.url, fresh_provider(), sleep=sleeps)
    with pytest.raises(TokenRequestError) as info:
        client.exchange(audience=AUD)
    assert (info.value.error, info.value.description, info.value.status) == (error, "no", status)
    assert len(broker.token_requests) == 1
    assert sleeps == []


def test_retries_exhausted(broker, sleeps) -> None:
    broker.token_script = [broker.unavailable("1")] * 3
    client = ErrandClient(
        broker.url, fresh_provider(), retry=RetryPolicy(max_attempts=3), sleep=sleeps
    )
    with pytest.raises(RetriesExhausted) as info:
        client.exchange(audience=AUD)
    assert info.value.attempts == 3
    assert "503" in str(info.value)
    assert len(broker.token_requests) == 3 and sleeps == [1.0, 1.0]


def test_connection_errors_are_retried_with_fresh_tokens(sleeps) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = fresh_provider()
    client = ErrandClient(
        f"http://127.0.0.1:{port}", provider, retry=RetryPolicy(max_attempts=4), sleep=sleeps
    )
    with pytest.raises(RetriesExhausted, match="cannot reach the broker"):
        client.exchange(audience=AUD)
    assert len(provider.calls) == 4 and len(sleeps) == 3


def test_short_per_attempt_timeout(broker, sleeps) -> None:
    broker.delay_seconds = 1.0
    client = ErrandClient(
        broker.url,
        fresh_provider(),
        retry=RetryPolicy(max_attempts=2, timeout_seconds=0.2),
        sleep=sleeps,
    )
    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match="ReadTimeout"):
        client.exchange(audience=AUD)
    assert time.monotonic() - started < 1.5


def test_redirects_are_not_followed(broker, sleeps) -> None:
    broker.token_script = [(307, {}, {"Location": "https://elsewhere.example/token"})]
    client = ErrandClient(broker.url, fresh_provider(), sleep=sleeps)
    with pytest.raises(TokenRequestError) as info:
        client.exchange(audience=AUD)
    assert info.value.status == 307 and len(broker.token_requests) == 1


def test_server_text_is_sanitised(broker, sleeps) -> None:
    broker.token_script = [
        (400, {"error": "invalid_request", "error_description": "bad\n::set-env x"}, {})
    ]
    client = ErrandClient(broker.url, fresh_provider(), sleep=sleeps)
    with pytest.raises(TokenRequestError) as info:
        client.exchange(audience=AUD)
    assert "\n" not in str(info.value)


def test_non_json_503_is_still_retryable(broker, sleeps) -> None:
    broker.token_script = [(503, b"<html>bad gateway</html>", {})]
    client = ErrandClient(broker.url, fresh_provider(), sleep=sleeps)
    client.exchange(audience=AUD)
    assert len(broker.token_requests) == 2


def test_plain_http_only_to_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        ErrandClient("http://errand.example", fresh_provider())
    ErrandClient("http://errand.internal:8080", fresh_provider(), allow_http=True)
    ErrandClient("https://errand.example/", fresh_provider())
    with pytest.raises(ValueError):
        ErrandClient("https://user:pw@errand.example", fresh_provider())


def test_form_is_rfc8693(broker, sleeps) -> None:
    client = ErrandClient(broker.url, fresh_provider(), sleep=sleeps)
    client.exchange(
        audience=[AUD, "https://status.acme.example"],
        resources=["https://r.example/x"],
        scopes="deploy:read deploy:write",
        task_id="job-1",
        purpose="ship it",
        lifetime=120,
    )
    form = broker.token_requests[0]
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert form["subject_token_type"] == ["urn:ietf:params:oauth:token-type:jwt"]
    assert form["audience"] == [AUD, "https://status.acme.example"]
    assert form["resource"] == ["https://r.example/x"]
    assert form["scope"] == ["deploy:read deploy:write"]
    assert form["task_id"] == ["job-1"]
    assert form["purpose"] == ["ship it"]
    assert form["requested_lifetime"] == ["120"]
