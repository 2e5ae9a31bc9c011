"""Redis dies under a running broker. Fail closed (503 + Retry-After, never a token,
never `active: true`), then recover when Redis returns, without restarting gunicorn or the
worker. Redis comes back empty, so tokens issued before are inactive."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from broker.dev.embedded_redis import RedisProcess
from broker.store import keys as K
from tests.support.clocks import wait_until
from tests.support.stack import Stack, introspect, issue, mint, post_token

pytestmark = pytest.mark.e2e

ROUNDS = 6  # enough requests to reach both gunicorn workers


@pytest.fixture(scope="module")
def outage_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("outage-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def outage_stack(
    tmp_path_factory: pytest.TempPathFactory, outage_redis: RedisProcess, dev_issuer: Any
) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("outage-stack"), outage_redis.url, dev_issuer.issuer
    ).start()
    try:
        yield running
    finally:
        running.stop()


def _assert_unavailable(resp: requests.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-store"
    assert int(resp.headers["Retry-After"]) > 0
    body = resp.json()
    assert body["error"] == "temporarily_unavailable"
    assert body["error_description"]
    assert "access_token" not in body
    assert "active" not in body


def test_redis_killed_mid_run(outage_stack, outage_redis, dev_issuer, request):
    stack = outage_stack
    request.node.funcargs["stack"] = stack  # logs on failure (see conftest)
    http = requests.Session()
    http.trust_env = False
    before = [
        issue(stack, dev_issuer, http, task_id="outage")["access_token"] for _ in range(ROUNDS)
    ]
    assert all(introspect(stack, t, http).json()["active"] is True for t in before)

    outage_redis.kill()

    for _ in range(ROUNDS):
        start = time.monotonic()
        _assert_unavailable(post_token(stack, mint(dev_issuer), http, task_id="outage"))
        assert time.monotonic() - start < 5, "an outage must be a quick 503"
    for token in before:
        _assert_unavailable(introspect(stack, token, http))
    for _ in range(ROUNDS):
        ready = http.get(stack.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.headers["Retry-After"]
    assert http.get(stack.url + "/healthz", timeout=10).status_code == 200
    _assert_unavailable(
        http.post(
            stack.url + "/tasks/complete",
            headers={"Authorization": f"Bearer {before[0]}"},
            timeout=10,
        )
    )
    _assert_unavailable(http.post(stack.url + "/revoke", data={"token": before[0]}, timeout=10))

    outage_redis.start()  # the same port, empty

    assert wait_until(
        lambda: http.get(stack.url + "/readyz", timeout=10).status_code == 200, timeout=5
    )
    first_ok = wait_until(
        lambda: post_token(stack, mint(dev_issuer), http).status_code == 200, timeout=5
    )
    assert first_ok, "the broker did not recover after Redis came back"
    after = [
        issue(stack, dev_issuer, http, task_id="after-outage")["access_token"]
        for _ in range(ROUNDS)
    ]
    assert all(introspect(stack, t, http).json()["active"] is True for t in after)

    # Redis came back empty: the grants behind the earlier tokens are gone, so they are dead.
    for token in before:
        resp = introspect(stack, token, http)
        assert resp.status_code == 200
        assert resp.json() == {"active": False}

    # Nobody restarted anything.
    assert stack.alive("web") and stack.alive("worker")

    # The worker reconnected too: a completion is cleaned up by it.
    done = http.post(
        stack.url + "/tasks/complete", headers={"Authorization": f"Bearer {after[0]}"}, timeout=10
    )
    assert done.status_code == 200, done.text
    peek = redis.Redis.from_url(outage_redis.url, decode_responses=True)
    try:
        cleaned = wait_until(
            lambda: peek.exists(K.task_index("after-outage")) == 0, timeout=15, interval=0.25
        )
        assert cleaned, "the worker did not clean up after Redis returned:\n" + stack.logs()
    finally:
        peek.close()
    assert all(introspect(stack, t, http).json() == {"active": False} for t in after)
