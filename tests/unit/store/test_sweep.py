"""RedisGrantStore.sweep_expired: the safety net that empties the indexes of expired grants."""

from __future__ import annotations

from broker.domain.audit_hmac import jti_hmac
from broker.store import keys
from tests.support.jws import token_parts
from tests.support.redis import stream_events

INDEXES = (
    keys.task_index("sweep-task"),
    keys.identity_index("acme-deploy"),
)


def jti_of(body) -> str:
    return str(token_parts(body["access_token"])[1]["jti"])


def members(r, key: str) -> set[str]:
    return set(r.zrange(key, 0, -1))


def expiry_jtis(r) -> set[str]:
    return {m.split(" ")[0] for m in r.zrange(keys.EXPIRY_INDEX, 0, -1)}


def test_sweep_removes_expired_entries_from_every_index(issued, svc, clock) -> None:
    r = svc.redis
    short = jti_of(issued(task_id="sweep-task", requested_lifetime="60"))
    long = jti_of(issued(task_id="sweep-task", requested_lifetime="600"))
    for index in INDEXES:
        assert members(r, index) == {short, long}
    assert expiry_jtis(r) == {short, long}

    clock.advance(120)  # `short` has expired, `long` has not
    assert not r.exists(keys.grant(short))  # the grant hash went by its own TTL
    assert svc.store.sweep_expired(now=int(clock.now()), batch=100) == 1
    for index in INDEXES:
        assert members(r, index) == {long}
    assert expiry_jtis(r) == {long}
    expired = [e for e in stream_events(svc) if e.get("event") == "grant.expired"]
    assert [(e["jti_hmac"], e["task"], e["identity"]) for e in expired] == [
        (jti_hmac(short), "sweep-task", "acme-deploy")
    ]
    assert "jti" not in expired[0]  # never the plain jti

    # Idempotent: nothing more until `long` expires.
    assert svc.store.sweep_expired(now=int(clock.now()), batch=100) == 0
    clock.advance(600)
    assert svc.store.sweep_expired(now=int(clock.now()), batch=100) == 1
    assert expiry_jtis(r) == set()
    for index in INDEXES:
        assert members(r, index) == set()


def test_sweep_honours_the_batch_size(issued, svc, clock) -> None:
    for _ in range(5):
        issued(task_id="sweep-task", requested_lifetime="60")
    clock.advance(61)
    now = int(clock.now())
    assert svc.store.sweep_expired(now=now, batch=2) == 2
    assert svc.store.sweep_expired(now=now, batch=2) == 2
    assert svc.store.sweep_expired(now=now, batch=2) == 1
    assert svc.store.sweep_expired(now=now, batch=2) == 0


def test_sweep_with_the_clock_before_expiry_removes_nothing(issued, svc, clock) -> None:
    body = issued(task_id="sweep-task")
    exp = token_parts(body["access_token"])[1]["exp"]
    assert svc.store.sweep_expired(now=exp - 1, batch=100) == 0
    assert expiry_jtis(svc.redis) == {jti_of(body)}


def test_expired_grants_are_not_listed(issued, svc, clock) -> None:
    issued(task_id="sweep-task", requested_lifetime="60")
    live = jti_of(issued(task_id="sweep-task", requested_lifetime="600"))
    clock.advance(61)
    listed = svc.store.list_grants(now=int(clock.now()), task_id=None, identity_ids=None, limit=100)
    assert [g.jti for g in listed] == [live]
