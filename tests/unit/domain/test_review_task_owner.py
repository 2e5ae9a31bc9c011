"""A task has one owner for its whole life, recorded explicitly (docs/security-model.md, "State and
faults"): no other identity joins it, completes it or takes its name, whichever of the
owner's grants happen to be stored at the time."""

from __future__ import annotations

import dataclasses
from typing import Any

from broker.domain.models import Grant
from broker.store import keys
from broker.tokens.mint import mint_access_token
from tests.support.builders import DEPLOY_AUD
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error, introspect
from tests.support.jws import token_parts
from tests.support.redis import grant_state_keys, stream_events

STRANGER_REF = "refs/heads/release"  # matches identity acme-release, not the owner acme-deploy


def complete(client: Any, token: str) -> Any:
    return client.post("/tasks/complete", headers={"Authorization": f"Bearer {token}"})


def stranger_exchange(client: Any, subject: Any, task_id: str) -> Any:
    form = deploy_form(subject(ref=STRANGER_REF), task_id=task_id, scope="release:write")
    return client.post("/token", data=form)


def active(client: Any, token: str) -> bool:
    return bool(introspect(client, token).get_json()["active"])


def assert_task_foreign(svc: Any, resp: Any) -> None:
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "another identity" in body["error_description"]
    assert "Retry-After" not in resp.headers  # nothing to retry: the name is taken
    denied = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert denied[-1]["reason"] == "task_foreign"
    assert denied[-1]["identity"] == "acme-release"


def renewal_window(issued: Any, clock: Any, svc: Any, task_id: str) -> str:
    """The owner renews on the same task; its first grant then expires from Redis while the
    renewal is live. Returns the renewal's token."""
    first = issued(task_id=task_id, requested_lifetime="60")["access_token"]
    clock.advance(30)
    renewal = issued(task_id=task_id, requested_lifetime="600")["access_token"]
    clock.advance(31)
    r = svc.redis
    first_jti = token_parts(first)[1]["jti"]
    assert not r.exists(keys.grant(first_jti))  # gone by TTL ...
    assert r.zrange(keys.task_index(task_id), 0, 0) == [first_jti]  # ... still first in index
    return str(renewal)


def test_stranger_cannot_join_task_in_renewal_window(client, issued, subject, clock, svc) -> None:
    renewal = renewal_window(issued, clock, svc, "renewing")
    before = grant_state_keys(svc)

    assert_task_foreign(svc, stranger_exchange(client, subject, "renewing"))

    assert grant_state_keys(svc) == before  # no grant, index entry or spent jti
    assert active(client, renewal)
    assert issued(task_id="renewing")["task_id"] == "renewing"  # the owner carries on


def test_stranger_cannot_complete_task_in_renewal_window(
    client, issued, subject, clock, svc
) -> None:
    renewal = renewal_window(issued, clock, svc, "renewing")
    joined = stranger_exchange(client, subject, "renewing")
    if joined.status_code == 200:  # it must not get here; if it did, it must not end the task
        complete(client, joined.get_json()["access_token"])
    assert active(client, renewal), "a stranger ended the owner's live token"
    assert not svc.redis.exists(keys.task_tombstone("renewing"))
    assert joined.status_code == 400


def test_stranger_holding_a_grant_of_the_task_cannot_complete_it(client, issued, svc) -> None:
    """Completion checks the recorded owner, not whichever grant the token names. The
    stranger's grant is planted as if it had got into the task some other way."""
    owner_token = issued(task_id="guarded")["access_token"]
    r = svc.redis
    owner_grant = svc.store.list_grants(
        now=int(svc.clock.now()), task_id="guarded", identity_ids=None, limit=10
    )[0]
    stranger_grant: Grant = dataclasses.replace(
        owner_grant,
        jti="planted-jti",
        identity_id="acme-release",
        owner="release-team",
        client_id="acme-release",
        scopes=("release:write",),
        audiences=(DEPLOY_AUD,),
    )
    plant(r, stranger_grant)
    stranger_token = mint_access_token(stranger_grant, svc.keyring, svc.config.broker.issuer)
    assert active(client, stranger_token)

    body = assert_oauth_error(complete(client, stranger_token), 403, "access_denied")
    assert "another identity" in body["error_description"]

    assert not r.exists(keys.task_tombstone("guarded"))
    assert active(client, owner_token)
    refused = [e for e in stream_events(svc) if e.get("event") == "task.completed"]
    assert [e["outcome"] for e in refused] == ["denied"]
    assert refused[0]["reason"] == "task_foreign"
    # The owner still completes its own task.
    assert complete(client, owner_token).status_code == 200
    assert not active(client, owner_token)


def test_stranger_cannot_take_a_task_name_its_owner_still_holds(
    client, issued, subject, svc
) -> None:
    """Squatting: the owner's only token was revoked (say, between two steps of its job); the
    task is still the owner's, so a stranger naming it is refused and the owner resumes."""
    token = issued(task_id="release-42")["access_token"]
    assert client.post("/revoke", data={"token": token}).status_code == 200
    before = grant_state_keys(svc)

    assert_task_foreign(svc, stranger_exchange(client, subject, "release-42"))

    assert grant_state_keys(svc) == before
    assert issued(task_id="release-42")["task_id"] == "release-42"


def test_task_foreign_is_a_400_never_a_retryable_503(client, issued, subject, svc) -> None:
    issued(task_id="taken")
    for _ in range(3):
        assert_task_foreign(svc, stranger_exchange(client, subject, "taken"))
    # The stranger's own tasks are unaffected.
    assert stranger_exchange(client, subject, "release-own").status_code == 200


def test_task_owner_key_lives_as_long_as_the_task(client, issued, clock, svc) -> None:
    r = svc.redis
    owner_key = keys.task_owner("lifetime")
    first = issued(task_id="lifetime", requested_lifetime="600")["access_token"]
    assert r.get(owner_key) == "acme-deploy"
    assert r.expiretime(owner_key) == token_parts(first)[1]["exp"]
    # A shorter renewal never shortens the owner's hold; a longer one extends it.
    clock.advance(10)
    issued(task_id="lifetime", requested_lifetime="60")
    assert r.expiretime(owner_key) == token_parts(first)[1]["exp"]
    clock.advance(100)
    longer = issued(task_id="lifetime", requested_lifetime="600")["access_token"]
    assert r.expiretime(owner_key) == token_parts(longer)[1]["exp"]
    # After completion the owner is kept as long as the tombstone.
    assert complete(client, longer).status_code == 200
    assert r.expiretime(owner_key) >= r.expiretime(keys.task_tombstone("lifetime"))
    assert r.get(owner_key) == "acme-deploy"


# A task opened before owner keys existed has none: `python -m broker.store.key_migration`
# gives it its earliest live grant's identity as owner when it renames the
# keys, so the grant write no longer reads another key to find one (every key in KEYS).


def plant(r: Any, grant: Grant) -> None:
    """Write a grant record and its task entry directly, bypassing the grant write."""
    from broker.store.grant_record import grant_fields as _grant_fields

    fields = _grant_fields(grant)
    r.hset(keys.grant(grant.jti), mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
    r.expireat(keys.grant(grant.jti), grant.exp)
    r.zadd(keys.task_index(grant.task_id), {grant.jti: grant.exp})
