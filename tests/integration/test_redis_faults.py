"""Fail closed on a Redis that is down, read-only or out of memory; recover without a restart.

Each test owns a dedicated redis-server (RedisProcess on a free port), never the session's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker.dev.embedded_redis import RedisProcess, free_port
from broker.domain.introspection import introspect
from broker.domain.task_completion import complete_task
from broker.domain.token_revocation import revoke_token
from broker.errors import TemporarilyUnavailable
from broker.services import check_redis_policy
from broker.settings import Settings
from broker.store import keys
from tests.support.domain import exchange
from tests.support.redis import snapshot

pytestmark = pytest.mark.integration

# Fail fast: an outage is a quick 503, not a hung request (connect/op timeout is 0.5 s).
MAX_FAULT_SECONDS = 5.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "own-redis").start()
    yield server
    server.stop()


def test_introspection_fails_closed_when_redis_is_killed_and_recovers(own_redis, make_svc, subject):
    svc = make_svc(own_redis.url)
    before = exchange(svc, subject(), task_id="outage-task")
    assert introspect(before.access_token, svc)["active"] is True

    own_redis.kill()

    with pytest.raises(TemporarilyUnavailable) as err:
        start = time.monotonic()
        introspect(before.access_token, svc)
    assert time.monotonic() - start < MAX_FAULT_SECONDS
    assert err.value.status_code == 503
    assert err.value.headers()["Retry-After"]
    # Nothing that needs Redis pretends to work.
    with pytest.raises(TemporarilyUnavailable):
        exchange(svc, subject(), task_id="outage-task")
    with pytest.raises(TemporarilyUnavailable):
        revoke_token(before.access_token, svc, actor="holder")
    with pytest.raises(TemporarilyUnavailable):
        complete_task(before.access_token, svc)

    own_redis.restart()  # same port, empty: nothing survived the crash (--save "")
    assert own_redis.url == svc.settings.redis_url

    # Same Services object, no rebuild: the grant is gone, so the old token is inactive...
    assert introspect(before.access_token, svc) == {"active": False}
    # ... and new exchanges work again (the Lua scripts are reloaded after NOSCRIPT).
    after = exchange(svc, subject(), task_id="outage-task-2")
    assert introspect(after.access_token, svc)["active"] is True


def test_exchange_during_outage_is_quick_and_issues_nothing(own_redis, make_svc, subject):
    svc = make_svc(own_redis.url)
    exchange(svc, subject())  # warm the JWKS cache
    own_redis.kill()
    token = subject()
    start = time.monotonic()
    with pytest.raises(TemporarilyUnavailable):
        exchange(svc, token)
    assert time.monotonic() - start < MAX_FAULT_SECONDS
    own_redis.restart()
    # The subject token was not burned by the failed attempt.
    issued = exchange(svc, token)
    assert introspect(issued.access_token, svc)["active"] is True


def test_read_only_redis_refuses_exchange_and_writes_nothing(own_redis, make_svc, subject):
    svc = make_svc(own_redis.url)
    exchange(svc, subject(), task_id="ro-task")
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    admin.replicaof("127.0.0.1", free_port())  # a replica of nothing: read-only
    try:
        before = snapshot(admin)
        with pytest.raises(TemporarilyUnavailable):
            exchange(svc, subject(), task_id="ro-task")
        assert snapshot(admin) == before
    finally:
        admin.replicaof("NO", "ONE")
    exchange(svc, subject(), task_id="ro-task")


def test_out_of_memory_redis_refuses_exchange_and_writes_nothing(own_redis, make_svc, subject):
    svc = make_svc(own_redis.url)
    first = exchange(svc, subject(), task_id="oom-task")
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    admin.config_set("maxmemory", 1)
    try:
        before = snapshot(admin)
        with pytest.raises(TemporarilyUnavailable):
            exchange(svc, subject(), task_id="oom-task")
        assert snapshot(admin) == before
        # Reads still answer, and answer correctly.
        assert introspect(first.access_token, svc)["active"] is True
    finally:
        admin.config_set("maxmemory", 0)
    exchange(svc, subject(), task_id="oom-task")


def test_refuses_to_start_on_an_evicting_redis(own_redis, make_svc, int_key_dir):
    svc = make_svc(own_redis.url)
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    prod = Settings(
        config_path=Path("unused.yaml"), redis_url=own_redis.url, signing_key_dir=int_key_dir
    )
    with pytest.raises(SystemExit, match="noeviction"):
        check_redis_policy(svc, prod)
    dev = Settings(
        config_path=Path("unused.yaml"),
        redis_url=own_redis.url,
        signing_key_dir=int_key_dir,
        environment="development",
    )
    check_redis_policy(svc, dev)  # development: a loud warning, not a refusal
    admin.config_set("maxmemory-policy", "noeviction")
    check_redis_policy(svc, prod)


def test_revoke_all_cut_holds_across_a_reconnect(own_redis, make_svc, subject):
    """A revoke-all cut held in Redis: tokens stamped before it stay dead after a reconnect."""
    svc = make_svc(own_redis.url)
    issued = exchange(svc, subject())
    admin = redis.Redis.from_url(own_redis.url)
    admin.incr(keys.EPOCH)
    admin.client_kill_filter(_type="normal", skipme=True)  # drop the broker's connections
    assert introspect(issued.access_token, svc) == {"active": False}
