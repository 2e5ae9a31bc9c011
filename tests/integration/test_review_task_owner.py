"""Task ownership on a real Redis: the owner is recorded once and outlives the owner's
expired grants, and racing identities get exactly one owner (docs/security-model.md: a task has one
owner for its whole life). Grants are expired with PEXPIRE, never by sleeping."""

from __future__ import annotations

import threading

import pytest

from broker.domain.introspection import introspect
from broker.domain.task_completion import complete_task
from broker.errors import BrokerError, InvalidRequest
from broker.store import keys
from tests.support.domain import exchange
from tests.support.redis import snapshot

pytestmark = pytest.mark.integration

STRANGER = {"ref": "refs/heads/release"}  # matches acme-release; the owner is acme-deploy


def test_stranger_cannot_join_task_in_renewal_window(svc, raw, subject):
    first = exchange(svc, subject(), task_id="it-renewing", requested_lifetime=120)
    renewal = exchange(svc, subject(), task_id="it-renewing", requested_lifetime=600)
    raw.pexpire(keys.grant(first.grant.jti), 0)  # the first grant's TTL runs out
    assert raw.exists(keys.grant(first.grant.jti)) == 0
    assert raw.zrange(keys.task_index("it-renewing"), 0, 0) == [first.grant.jti]
    before = snapshot(raw)

    with pytest.raises(InvalidRequest) as refused:
        exchange(svc, subject(**STRANGER), task_id="it-renewing", scopes=("release:write",))

    assert refused.value.reason == "task_foreign"
    assert refused.value.status_code == 400
    assert snapshot(raw) == before
    assert introspect(renewal.access_token, svc)["active"] is True
    assert raw.get(keys.task_owner("it-renewing")) == "acme-deploy"
    assert raw.expiretime(keys.task_owner("it-renewing")) == renewal.grant.exp


def test_owner_key_outlives_the_owner_grants_it_covers(svc, raw, subject):
    """Even with every grant of the task gone from Redis, the name stays the owner's until
    its latest grant would have expired."""
    issued = exchange(svc, subject(), task_id="it-emptied")
    raw.pexpire(keys.grant(issued.grant.jti), 0)
    raw.delete(keys.task_index("it-emptied"))

    with pytest.raises(InvalidRequest) as refused:
        exchange(svc, subject(**STRANGER), task_id="it-emptied", scopes=("release:write",))
    assert refused.value.reason == "task_foreign"
    assert exchange(svc, subject(), task_id="it-emptied").grant.task_id == "it-emptied"


def test_identities_racing_to_open_one_task_get_one_owner(svc, raw, subject):
    exchange(svc, subject(), task_id="it-warm-up")  # the issuer's keys are cached first
    tokens = [subject() if n % 2 else subject(**STRANGER) for n in range(8)]
    barrier = threading.Barrier(len(tokens))
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()

    def go(token: str, stranger: bool) -> None:
        scopes = ("release:write",) if stranger else ("deploy:write",)
        barrier.wait()
        try:
            result = exchange(svc, token, task_id="it-contested", scopes=scopes)
            outcome = ("issued", result.grant.identity_id)
        except BrokerError as err:
            outcome = (err.reason, "")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=go, args=(t, n % 2 == 0)) for n, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    owner = raw.get(keys.task_owner("it-contested"))
    assert sorted(outcomes) == sorted([("issued", owner)] * 4 + [("task_foreign", "")] * 4)
    holders = {
        raw.hget(keys.grant(j), "i") for j in raw.zrange(keys.task_index("it-contested"), 0, -1)
    }
    assert holders == {owner}


def test_stranger_cannot_complete_after_owner_grant_expired(svc, raw, subject):
    """Completion on a real Redis: the owner's tokens stay active whatever a stranger does."""
    first = exchange(svc, subject(), task_id="it-finish", requested_lifetime=120)
    renewal = exchange(svc, subject(), task_id="it-finish", requested_lifetime=600)
    raw.pexpire(keys.grant(first.grant.jti), 0)
    with pytest.raises(InvalidRequest):
        exchange(svc, subject(**STRANGER), task_id="it-finish", scopes=("release:write",))
    assert raw.exists(keys.task_tombstone("it-finish")) == 0
    assert introspect(renewal.access_token, svc)["active"] is True
    assert complete_task(renewal.access_token, svc) == {"task_id": "it-finish", "completed": True}
    assert raw.ttl(keys.task_owner("it-finish")) >= raw.ttl(keys.task_tombstone("it-finish"))
