"""The hash-tagged key scheme (store/keys.py), the cluster settings, and the one-shot rename
of a single Redis's old key names (store/key_migration.py)."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from redis.cluster import key_slot

from broker.domain.grant_ids import TASK_BUCKETS, jti_bucket, new_grant_id, task_bucket
from broker.settings import SettingsError, load_settings
from broker.store import key_migration, keys


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_a_task_its_grants_tombstone_and_owner_share_a_slot() -> None:
    for task in ("deploy-42", "t", "x" * 64):
        jti = new_grant_id(task)
        assert jti_bucket(jti) == task_bucket(task)
        group = {slot(keys.grant(jti)), slot(keys.task_index(task))}
        group |= {slot(keys.task_tombstone(task)), slot(keys.task_owner(task))}
        group |= {slot(keys.task_state(task)), slot(keys.children_index(jti))}
        hop = new_grant_id(task)  # a delegation hop: minted in its root task's bucket
        group |= {slot(keys.grant(hop)), slot(keys.children_index(hop))}
        assert len(group) == 1


def test_the_global_group_is_one_slot() -> None:
    names = [
        keys.EPOCH, keys.EXPIRY_INDEX, keys.AUDIT_STREAM, keys.COMPLETING, keys.REVOCATION_FEED,
        keys.EPOCH_LOG, keys.EVIDENCE_STREAM, keys.FANOUTS, keys.SIGNING_KEYS,
        keys.SIGNING_KEYS_VERSION, keys.IDENTITY_STATE, keys.LAST_EXCHANGE, keys.NO_KEY,
        keys.fanout_progress(7), keys.TASKS_OPEN, keys.TASKS_COMPLETED, keys.WORKER_HEARTBEATS,
        keys.APPROVALS_PENDING, keys.approval("apr_x"),
    ]  # fmt: skip
    assert len({slot(k) for k in names}) == 1


def test_pairs_used_together_share_a_slot() -> None:
    assert slot(keys.jwks("gh")) == slot(keys.jwks_lock("gh"))
    assert len({slot(k) for k in keys.auth_failures("ab12")}) == 1


def test_buckets_spread_over_the_slots() -> None:
    buckets = {task_bucket(f"task-{i}") for i in range(20_000)}
    assert len(buckets) == TASK_BUCKETS
    thirds = [0, 0, 0]
    for b in buckets:
        thirds[slot(f"errand:{{t.{b}}}:x") * 3 // 16384] += 1
    assert min(thirds) > TASK_BUCKETS / 3 * 0.8


def test_a_jti_without_a_bucket_falls_in_its_own() -> None:
    assert jti_bucket("Zm9vYmFy-legacy") == task_bucket("Zm9vYmFy-legacy")


def _env(**extra: str) -> dict[str, str]:
    return {"ERRAND_CONFIG": "x.yaml", "ERRAND_SIGNING_KEY_DIR": "/k", **extra}


def test_cluster_settings() -> None:
    s = load_settings(
        _env(
            ERRAND_REDIS_URL="redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
            ERRAND_QUEUE_REDIS_URL="redis://q:6379/0",
        )
    )
    assert s.redis_cluster_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert s.queue_redis_url == "redis://q:6379/0"
    flag = load_settings(
        _env(REDIS_URL="redis://n:7000", ERRAND_REDIS_CLUSTER="1", ERRAND_QUEUE_REDIS_URL="r://q")
    )
    assert flag.redis_cluster_nodes == (("n", 7000),)
    plain = load_settings(_env(REDIS_URL="redis://n:6379/0"))
    assert plain.redis_cluster_nodes == () and plain.queue_redis_url == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "ERRAND_QUEUE_REDIS_URL"),
        ({"ERRAND_QUEUE_REDIS_URL": "redis://q", "ERRAND_REDIS_WAIT_REPLICAS": "1"}, "WAIT"),
    ],
)
def test_cluster_settings_refused(extra: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(_env(ERRAND_REDIS_URL="redis+cluster://n:7000", **extra))


def test_old_key_names_are_renamed_once(tmp_path: Path) -> None:
    r = fakeredis.FakeStrictRedis(server=fakeredis.FakeServer(), decode_responses=True)
    r.set("errand:epoch", "100")
    r.hset("errand:keys", "kid1", "{}")
    r.hset("errand:identity:state", "bad", '{"state":"suspended"}')
    r.hset("errand:grant:OLDJTI", mapping={"i": "ci", "t": "task1", "p": "100"})
    r.expire("errand:grant:OLDJTI", 300)
    r.zadd("errand:task:task1", {"OLDJTI": 2_000_000_000})
    r.expire("errand:task:task1", 300)
    r.set("errand:task-done:task2", "1", ex=60)
    r.zadd("errand:ident:ci", {"OLDJTI": 2_000_000_000})
    # The task lifecycle's, delegation's, gauges' and approvals' keys
    r.hset("errand:task-state:task1", mapping={"s": "suspended"})
    r.zadd("errand:children:OLDJTI", {"HOPJTI": 2_000_000_000})
    r.zadd("errand:tasks:open", {"task1": 2_000_000_000})
    r.hset("errand:approval:apr_1", mapping={"s": "pending"})
    r.zadd("errand:approvals:pending", {"apr_1": 2_000_000_000})
    counts = key_migration.migrate(r)
    assert counts["renamed"] == 12 and counts["owners"] == 1
    assert r.hget(keys.task_state("task1"), "s") == "suspended"
    assert r.zscore(keys.children_index("OLDJTI"), "HOPJTI") is not None
    assert r.exists(keys.TASKS_OPEN, keys.APPROVALS_PENDING, keys.approval("apr_1")) == 3
    assert r.get(keys.EPOCH) == "100" and r.hget(keys.IDENTITY_STATE, "bad")
    assert r.hget(keys.grant("OLDJTI"), "t") == "task1" and r.ttl(keys.grant("OLDJTI")) > 0
    assert r.get(keys.task_owner("task1")) == "ci" and r.ttl(keys.task_owner("task1")) > 0
    assert r.exists(keys.task_tombstone("task2"), keys.identity_index("ci")) == 2
    assert not r.exists("errand:epoch", "errand:grant:OLDJTI", "errand:task:task1")
    assert key_migration.migrate(r)["renamed"] == 0  # idempotent
