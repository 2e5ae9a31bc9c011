"""Every store module turns a Redis fault into StoreUnavailable, through one translation
(store/connection.py store_errors), so the domain can answer 503 and never a half-answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from broker.domain.models import Grant
from broker.domain.ports import StoreUnavailable
from broker.store import keys
from broker.store.auth_failures import RedisAuthFailures
from broker.store.jwks_mirror import JwksMirror
from broker.store.limits import RedisLimits
from broker.store.redis import RedisGrantStore
from broker.store.revocations import RedisRevocationStore

GRANT = Grant(
    jti="jti-1",
    identity_id="acme-deploy",
    identity_type="service",
    owner="platform-team",
    task_id="task-1",
    audiences=("https://deploy.acme.example",),
    scopes=("deploy:read",),
    iat=1_000,
    exp=1_600,
    client_id="acme-deploy",
    issuer_id="gha",
    epoch=1,
)

CALLS: dict[str, Callable[[Any, Any, Any], Any]] = {
    # grants
    "ensure_epoch": lambda s, v, lim: s.ensure_epoch(),
    "current_epoch": lambda s, v, lim: s.current_epoch(),
    "preflight": lambda s, v, lim: s.preflight(issuer_id="gha", jti="j", task_id="t"),
    "save_grant": lambda s, v, lim: s.save_grant(GRANT, replay=None, audit={}, now=1_000),
    "grant_state": lambda s, v, lim: s.grant_state("j", "t"),
    "revoke_grant": lambda s, v, lim: s.revoke_grant("j", audit={}),
    "complete_task": lambda s, v, lim: s.complete_task(
        "t", identity_id="i", tombstone_seconds=60, audit={}, now=1_000
    ),
    "transition_task": lambda s, v, lim: s.transition_task(
        "t",
        target="suspended",
        identity_id=None,
        audit={},
        now=1_000,
        tombstone_seconds=60,
        suspension_seconds=60,
        feed_expiry=1_060,
        skew_seconds=0,
    ),
    "task_record": lambda s, v, lim: s.task_record("t", now=1_000, limit=10),
    "task_terminal_state": lambda s, v, lim: s.task_terminal_state("t"),
    "task_grant_ids": lambda s, v, lim: s.task_grant_ids("t"),
    "finish_task_cleanup": lambda s, v, lim: s.finish_task_cleanup("t"),
    "stale_completions": lambda s, v, lim: s.stale_completions(1_000),
    "sweep_expired": lambda s, v, lim: s.sweep_expired(now=1_000, batch=10),
    "list_grants": lambda s, v, lim: s.list_grants(
        now=1_000, task_id=None, identity_ids=None, limit=10
    ),
    # audit stream
    "append_audit": lambda s, v, lim: s.append_audit({"event": "x"}),
    "audit_events": lambda s, v, lim: s.audit_events(task_id=None, limit=10),
    # inventory state
    "identity_state": lambda s, v, lim: s.identity_state("i"),
    "identity_states": lambda s, v, lim: s.identity_states(),
    "set_identity_state": lambda s, v, lim: s.set_identity_state("i", None, audit={}),
    "identity_grant_ids": lambda s, v, lim: s.identity_grant_ids("i"),
    "live_grant_counts": lambda s, v, lim: s.live_grant_counts(["i"], now=1_000),
    "last_exchanges": lambda s, v, lim: s.last_exchanges(),
    "ping": lambda s, v, lim: s.ping(),
    # revocations
    "revoke_all": lambda s, v, lim: v.revoke_all(now=1_000, audit={}),
    "revocations.current_epoch": lambda s, v, lim: v.current_epoch(),
    "fanout_batch": lambda s, v, lim: v.fanout_batch(1, 0, 10),
    "record_fanout_progress": lambda s, v, lim: v.record_fanout_progress(1, {"done": 1}),
    "fanout_progress": lambda s, v, lim: v.fanout_progress(1),
    "pending_fanouts": lambda s, v, lim: v.pending_fanouts(1_000),
    "index_members": lambda s, v, lim: v.index_members("k", 10),
    "live_grant_page": lambda s, v, lim: v.live_grant_page(0, 10),
    "revoke_many": lambda s, v, lim: v.revoke_many(["j"], publish_each=True),
    "read_feed": lambda s, v, lim: v.read_feed("0", limit=10, now=1_000),
    "trim_feed": lambda s, v, lim: v.trim_feed(60, 1_000),
    "append_evidence": lambda s, v, lim: v.append_evidence("r", "jws"),
    "list_evidence": lambda s, v, lim: v.list_evidence(10),
    # limits
    "hit_many": lambda s, v, lim: lim.hit_many([("addr", "1.2.3.4")], window_seconds=60),
}


@pytest.fixture
def stores() -> tuple[fakeredis.FakeServer, RedisGrantStore, RedisRevocationStore, RedisLimits]:
    server = fakeredis.FakeServer()
    r = fakeredis.FakeStrictRedis(server=server, decode_responses=True)
    return (
        server,
        RedisGrantStore(r, audit_maxlen=100),
        RedisRevocationStore(r, audit_maxlen=100),
        RedisLimits(r),
    )


@pytest.mark.parametrize("name", sorted(CALLS))
def test_redis_down_is_store_unavailable(name: str, stores: Any) -> None:
    server, store, revocations, limits = stores
    server.connected = False
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        CALLS[name](store, revocations, limits)


def test_every_store_method_is_covered(stores: Any) -> None:
    _, store, revocations, limits = stores
    public = {
        *(f"{n}" for n in dir(store) if not n.startswith("_")),
        *(f"revocations.{n}" if n == "current_epoch" else n for n in dir(revocations)),
        *dir(limits),
    }
    no_redis = {"index_key", "valid_cursor", "eviction_policy", "hit"}
    public = {n for n in public if not n.startswith("_")} - no_redis
    assert public <= set(CALLS)


def test_eviction_policy_is_none_when_redis_is_down(stores: Any) -> None:
    server, store, _, _ = stores
    server.connected = False
    assert store.eviction_policy() is None


def test_a_script_error_is_store_unavailable(stores: Any) -> None:
    """A key of the wrong type makes the grant write refuse as corrupt, before any write."""
    server, store, _, _ = stores
    r = fakeredis.FakeStrictRedis(server=server, decode_responses=True)
    store.ensure_epoch()
    r.set(keys.task_index(GRANT.task_id), "not a zset")
    with pytest.raises(StoreUnavailable, match="ERRAND_CORRUPT"):
        store.save_grant(GRANT, replay=None, audit={}, now=1_000)
    assert not r.exists(keys.grant(GRANT.jti))


MIRROR_CALLS: dict[str, Callable[[JwksMirror], Any]] = {
    "load": lambda m: m.load("gha"),
    "store": lambda m: m.store("gha", "{}", 1.0, 60),
    "try_lock_refresh": lambda m: m.try_lock_refresh("gha", 60),
    "mark_in_flight": lambda m: m.mark_in_flight("gha", 60),
    "record_failure": lambda m: m.record_failure("gha", 60),
    "fetch_state": lambda m: m.fetch_state("gha", 60, 5.0),
    "forget": lambda m: m.forget("gha"),
}


@pytest.mark.parametrize("name", sorted(MIRROR_CALLS))
def test_jwks_mirror_redis_down_is_store_unavailable(name: str) -> None:
    server = fakeredis.FakeServer()
    mirror = JwksMirror(fakeredis.FakeStrictRedis(server=server, decode_responses=True))
    server.connected = False
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        MIRROR_CALLS[name](mirror)


def test_auth_failures_redis_down_is_store_unavailable() -> None:
    server = fakeredis.FakeServer()
    failures = RedisAuthFailures(fakeredis.FakeStrictRedis(server=server, decode_responses=True))
    server.connected = False
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        failures.failures("10.0.0.1")
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        failures.note_failure("10.0.0.1", window_seconds=60, gate_seconds=1)
