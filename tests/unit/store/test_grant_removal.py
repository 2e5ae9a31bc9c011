"""Every way a grant is removed before it expires (one revocation, a bulk revocation, the
revoke-all clean-up) takes the grant and all its index entries (lua/prelude.lua drop_grant),
and leaves the other grants of its task and identity alone."""

from __future__ import annotations

import dataclasses
from typing import Any

import fakeredis
import pytest

from broker.clock import FixedClock
from broker.domain.models import Grant
from broker.store import keys
from broker.store.grant_record import expiry_member
from broker.store.grants import RedisGrants
from broker.store.revocations import RedisRevocationStore


def make_grant(jti: str, now: int, epoch: int) -> Grant:
    return Grant(
        jti=jti,
        identity_id="acme-deploy",
        identity_type="service",
        owner="platform-team",
        task_id="task-1",
        audiences=("https://deploy.acme.example",),
        scopes=("deploy:read",),
        iat=now,
        exp=now + 600,
        client_id="acme-deploy",
        issuer_id="gha",
        epoch=epoch,
    )


@pytest.fixture
def world(clock: FixedClock) -> tuple[Any, RedisGrants, RedisRevocationStore, Grant, Grant]:
    r = fakeredis.FakeStrictRedis(server=fakeredis.FakeServer(), decode_responses=True)
    grants = RedisGrants(r, audit_maxlen=100)
    now = int(clock.now())
    epoch = grants.current_epoch()
    gone, kept = make_grant("gone", now, epoch), make_grant("kept", now, epoch)
    for g in (gone, kept):
        grants.save_grant(g, replay=None, audit={}, now=now)
    return r, grants, RedisRevocationStore(r, audit_maxlen=100), gone, kept


def assert_only(r: Any, kept: Grant, gone: Grant) -> None:
    assert not r.exists(keys.grant(gone.jti))
    assert r.exists(keys.grant(kept.jti))
    assert r.zrange(keys.task_index(kept.task_id), 0, -1) == [kept.jti]
    assert r.zrange(keys.identity_index(kept.identity_id), 0, -1) == [kept.jti]
    assert r.zrange(keys.EXPIRY_INDEX, 0, -1) == [expiry_member(kept)]


def test_revoke_grant(world: Any) -> None:
    r, grants, _, gone, kept = world
    assert grants.revoke_grant(gone.jti, audit={"event": "x"}) == (gone.task_id, gone.identity_id)
    assert_only(r, kept, gone)
    assert grants.revoke_grant(gone.jti, audit={"event": "x"}) is None


def test_revoke_many(world: Any) -> None:
    r, _, revocations, gone, kept = world
    assert revocations.revoke_many([gone.jti], publish_each=True) == 1
    assert_only(r, kept, gone)


def test_revoke_all_clean_up(world: Any, clock: FixedClock) -> None:
    r, _, revocations, gone, kept = world
    epoch, _ = revocations.revoke_all(now=int(clock.now()), audit={})
    newer = dataclasses.replace(kept, epoch=epoch)  # written after the cut: a survivor
    r.hset(keys.grant(kept.jti), "p", str(epoch))
    assert revocations.fanout_batch(epoch, 0, 10) == (2, 1, 1)
    assert_only(r, newer, gone)
