"""Delegation chains on a real Redis: revoking a hop revokes the hops below it (one script),
a bulk revocation does too, and a hop whose parent is revoked while its exchange runs is
refused by the atomic write, which then writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from broker.domain.bulk_revocation import revoke_by
from broker.domain.exchange import exchange_token
from broker.domain.introspection import introspect
from broker.domain.models import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, IssuedToken
from broker.domain.task_completion import complete_task
from broker.domain.token_revocation import revoke_token
from broker.errors import InvalidRequest
from broker.store import keys
from tests.support.delegation import ACTORS, actor_ref, add_actors
from tests.support.domain import exchange, exchange_request
from tests.support.redis import snapshot

pytestmark = pytest.mark.integration

ROOT = "acme-deploy"


@pytest.fixture
def svc(make_svc):  # type: ignore[no-untyped-def]
    return make_svc(mutate=lambda raw: add_actors(raw, "gha", ROOT))


def hop(svc: Any, subject: Any, parent: str, actor: str) -> IssuedToken:
    return exchange(
        svc,
        parent,
        subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        actor_token=subject(**actor_ref(actor)),
        actor_token_type=TOKEN_TYPE_JWT,
        purpose="act for the root",
        scopes=("deploy:read",),
    )


def build_chain(svc: Any, subject: Any, task: str, depth: int = 3) -> list[IssuedToken]:
    out = [exchange(svc, subject(), task_id=task, scopes=("deploy:read", "deploy:write"))]
    for actor in ACTORS[:depth]:
        out.append(hop(svc, subject, out[-1].access_token, actor))
    return out


def active(svc: Any, issued: IssuedToken) -> bool:
    return bool(introspect(issued.access_token, svc)["active"])


def test_revoking_a_middle_hop_revokes_below_not_above(svc, raw, subject):
    root, first, middle, last = build_chain(svc, subject, "it-chain")
    assert raw.zrange(keys.children_index(first.grant.jti), 0, -1) == [middle.grant.jti]
    assert revoke_token(middle.access_token, svc, actor="test") is True

    assert active(svc, root) and active(svc, first)
    assert not active(svc, middle) and not active(svc, last)
    assert raw.exists(keys.grant(last.grant.jti)) == 0  # gone, not just inactive
    assert raw.zscore(keys.task_index("it-chain"), last.grant.jti) is None
    entries = [f for _, f in raw.xrange(keys.REVOCATION_FEED, "-", "+")]
    assert [(f["v"], f.get("p")) for f in entries] == [
        (middle.grant.jti, None),
        (last.grant.jti, middle.grant.jti),
    ]
    assert raw.ttl(keys.children_index(root.grant.jti)) > 0  # every key has a TTL


def test_bulk_revocation_of_the_root_identity_reaches_its_chain(svc, raw, subject):
    root, *hops = build_chain(svc, subject, "it-bulk", depth=2)
    result = revoke_by(svc, kind="identity", value=ROOT, reason="incident", actor="test")
    assert result.revoked == 3  # the root's grant and the two hops below it
    assert not any(active(svc, t) for t in (root, *hops))
    published = {f["v"] for _, f in raw.xrange(keys.REVOCATION_FEED, "-", "+")}
    assert {h.grant.jti for h in hops} <= published


def test_parent_revoked_during_the_hop_refuses_the_write(svc, raw, subject, monkeypatch):
    root, first = build_chain(svc, subject, "it-race", depth=1)
    real = svc.store.preflight

    def preflight_then_revoke(**kw: Any) -> Any:
        state = real(**kw)
        revoke_token(first.access_token, svc, actor="racer")
        return state

    monkeypatch.setattr(svc.store, "preflight", preflight_then_revoke)
    req = exchange_request(
        first.access_token,
        subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        actor_token=subject(**actor_ref("hop-b")),
        actor_token_type=TOKEN_TYPE_JWT,
        purpose="race",
        scopes=("deploy:read",),
    )
    before = snapshot(raw)
    with pytest.raises(InvalidRequest) as refused:
        exchange_token(req, svc)
    assert refused.value.reason == "subject_inactive"
    # Nothing written but the racing revocation itself: no hop, the actor token unspent.
    after = snapshot(raw)
    assert after.keys() - before.keys() <= {keys.REVOCATION_FEED.encode()}
    assert {k for k in after if k.startswith(b"errand:replay:")} == {
        k for k in before if k.startswith(b"errand:replay:")
    }
    assert active(svc, root)


def test_completing_the_root_task_tombstones_every_hop(svc, raw, subject):
    chain = build_chain(svc, subject, "it-complete")
    assert complete_task(chain[0].access_token, svc)["completed"] is True
    assert not any(active(svc, t) for t in chain)
    assert set(raw.zrange(keys.task_index("it-complete"), 0, -1)) == {
        t.grant.jti for t in chain
    }  # all indexed under the root task: the clean-up job revokes them
