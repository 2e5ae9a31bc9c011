"""Key-record authentication against a real redis-server: a record edited in Redis by someone
without the KEK is never published nor used; old-format records migrate in one
compare-and-set (WATCH/MULTI), which a concurrent change turns into a no-op."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis

from broker.clock import FixedClock
from broker.store import keys
from broker.store.signing_keys import RedisKeyRecords
from broker.tokens.keyrecord import new_kek
from broker.tokens.keystore import RedisKeyRing
from tests.support.keyrecords import legacy_record

pytestmark = [pytest.mark.integration, pytest.mark.regression]


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def kek() -> bytes:
    return base64.b64decode(new_kek())


def node(raw: redis.Redis, kek: bytes, clock: FixedClock) -> RedisKeyRing:
    return RedisKeyRing(
        RedisKeyRecords(raw), kek, max_token_ttl_seconds=900, refresh_seconds=0, clock=clock
    )


def test_removed_flag_tampered_in_redis_does_not_republish(raw, kek) -> None:
    clock = FixedClock()
    ring = node(raw, kek, clock)
    old = ring.active.kid
    ring.rotate(emergency=True)
    record = json.loads(raw.hget(keys.SIGNING_KEYS, old))
    record["removed"] = False
    raw.hset(keys.SIGNING_KEYS, old, json.dumps(record))
    fresh = node(raw, kek, clock)
    assert old not in {k["kid"] for k in fresh.jwks()["keys"]}
    assert fresh.get(old) is None and fresh.active.kid != old


def test_old_records_migrate_in_one_compare_and_set(raw, kek) -> None:
    clock = FixedClock()
    kid, text = legacy_record(kek, clock.now())
    raw.hset(keys.SIGNING_KEYS, kid, text)
    assert node(raw, kek, clock).active.kid == kid
    assert json.loads(raw.hget(keys.SIGNING_KEYS, kid))["v"] == 2


def test_replace_is_a_no_op_when_the_hash_changed(raw) -> None:
    store = RedisKeyRecords(raw)
    raw.hset(keys.SIGNING_KEYS, "a", "1")
    snapshot = store.load_all()
    raw.hset(keys.SIGNING_KEYS, "b", "2")  # another node wrote meanwhile
    assert store.replace(snapshot, {"a": "new"}) is False
    assert store.load_all() == {"a": "1", "b": "2"}
    assert store.replace(store.load_all(), {"a": "new"}) is True
    assert raw.hget(keys.SIGNING_KEYS, "a") == "new"
