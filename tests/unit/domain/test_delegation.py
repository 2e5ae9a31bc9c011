"""Delegation chains through POST /token on fakeredis (RFC 8693 actor_token, act, may_act):
nested act, narrowing only, the depth limit, may_act, the root task, and revocation that
reaches every hop below and none above."""

from __future__ import annotations

from typing import Any

import pytest

from broker.domain.models import TOKEN_TYPE_ACCESS_TOKEN
from broker.store import keys
from tests.support.builders import DEPLOY_AUD, UNIT_ISSUER, make_config
from tests.support.delegation import (
    ACTORS,
    NOT_A_DELEGATE,
    actor_ref,
    add_actors,
    hop_form,
)
from tests.support.forms import JWT_BEARER
from tests.support.http import assert_oauth_error, introspect
from tests.support.redis import grant_state_keys, stream_events

ROOT = "acme-deploy"


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(UNIT_ISSUER, lambda raw: add_actors(raw, "gha", ROOT))


@pytest.fixture
def root(issued) -> dict[str, Any]:
    """The root token: acme-deploy's, deploy:read and deploy:write at the deploy audience."""
    return issued(scope="deploy:read deploy:write", task_id="task-root")


@pytest.fixture
def hop(client, subject):  # type: ignore[no-untyped-def]
    """POST a hop: `actor` acts with `subject_token` (any form overrides)."""

    def post(subject_token: str, actor: str | None, **fields: Any) -> Any:
        actor_token = subject(**actor_ref(actor)) if actor else None
        return client.post("/token", data=hop_form(subject_token, actor_token, **fields))

    return post


def chain(hop, root_token: str, actors: tuple[str, ...], **fields: Any) -> list[dict[str, Any]]:
    out, token = [], root_token
    for actor in actors:
        resp = hop(token, actor, **fields)
        assert resp.status_code == 200, resp.get_json()
        out.append(resp.get_json())
        token = out[-1]["access_token"]
    return out


def test_three_hops_nest_act_and_a_fourth_is_refused(client, hop, root, svc) -> None:
    hops = chain(hop, root["access_token"], ACTORS[:3], scope="deploy:read")
    info = introspect(client, hops[-1]["access_token"]).get_json()
    assert info["active"] is True
    assert info["sub"] == ROOT  # the subject stays the root's identity
    assert info["client_id"] == "hop-c"  # the actor holds it
    assert info["act"] == {"sub": "hop-c", "act": {"sub": "hop-b", "act": {"sub": "hop-a"}}}
    assert info["task_id"] == root["task_id"]  # every hop belongs to the root task
    assert [h["task_id"] for h in hops] == [root["task_id"]] * 3
    assert hops[-1]["issued_token_type"] == TOKEN_TYPE_ACCESS_TOKEN
    assert "act" not in introspect(client, root["access_token"]).get_json()

    before = grant_state_keys(svc)
    body = assert_oauth_error(hop(hops[-1]["access_token"], "hop-d"), 400, "invalid_request")
    assert "maximum depth" in body["error_description"]
    assert grant_state_keys(svc) == before
    (event,) = [e for e in stream_events(svc) if e.get("reason") == "delegation_depth_exceeded"]
    assert event["subject_identity"] == ROOT


def test_issued_hop_is_audited_with_its_chain(hop, root, svc) -> None:
    chain(hop, root["access_token"], ("hop-a",))
    (event,) = [e for e in stream_events(svc) if e.get("jti_hmac") and e.get("act")]
    assert event["identity"] == "hop-a"
    assert event["subject_identity"] == ROOT
    assert event["act"] == ["hop-a"]
    assert event["depth"] == 1
    assert event["parent_jti_hmac"]
    assert "actor_token_hmac" in event and event["token_hmac"] != event["actor_token_hmac"]


@pytest.mark.parametrize(
    ("fields", "error", "reason"),
    [
        ({"scope": "deploy:write"}, "invalid_scope", "scope_widened"),
        ({"audience": "https://status.acme.example"}, "invalid_target", "audience_widened"),
    ],
    ids=["scope", "audience"],
)
def test_a_widening_hop_is_refused(hop, issued, svc, fields, error, reason) -> None:
    narrow = issued(scope="deploy:read", task_id="task-narrow")
    before = grant_state_keys(svc)
    assert_oauth_error(hop(narrow["access_token"], "hop-a", **fields), 400, error)
    assert grant_state_keys(svc) == before
    assert stream_events(svc)[-1]["reason"] == reason


def test_hop_lifetime_never_outlives_its_parent(hop, issued, client) -> None:
    short = issued(requested_lifetime="60", task_id="task-short")
    (first,) = chain(hop, short["access_token"], ("hop-a",), requested_lifetime="600")
    assert first["expires_in"] <= 60
    info = introspect(client, first["access_token"]).get_json()
    assert info["exp"] <= introspect(client, short["access_token"]).get_json()["exp"]


def test_an_actor_without_a_delegation_rule_is_refused(hop, root) -> None:
    body = assert_oauth_error(hop(root["access_token"], NOT_A_DELEGATE), 400, "invalid_request")
    assert body["error_description"].startswith("actor_token:")


def test_a_chain_never_loops(hop, root) -> None:
    (first,) = chain(hop, root["access_token"], ("hop-a",))
    resp = hop(first["access_token"], "hop-a")
    assert_oauth_error(resp, 400, "invalid_request")


def test_may_act_admits_the_named_actor_only(hop, issued, client) -> None:
    named = issued(task_id="task-may-act", may_act="hop-b")
    assert introspect(client, named["access_token"]).get_json()["may_act"] == {"sub": "hop-b"}
    body = assert_oauth_error(hop(named["access_token"], "hop-a"), 400, "invalid_request")
    assert "may_act" in body["error_description"]
    assert hop(named["access_token"], "hop-b").status_code == 200


@pytest.mark.parametrize("token_type", [TOKEN_TYPE_ACCESS_TOKEN, "jwt"])
def test_our_token_without_an_actor_is_refused(client, issued, svc, token_type) -> None:
    """A subject token that carries may_act (or act) is never read as a plain subject."""
    named = issued(task_id="task-no-actor", may_act="hop-b")
    form = hop_form(named["access_token"], None)
    if token_type == "jwt":
        form["subject_token_type"] = "urn:ietf:params:oauth:token-type:jwt"
    before = grant_state_keys(svc)
    assert_oauth_error(client.post("/token", data=form), 400, "invalid_request")
    assert grant_state_keys(svc) == before


def test_a_hop_token_is_refused_on_the_jwt_bearer_grant(client, hop, root) -> None:
    (first,) = chain(hop, root["access_token"], ("hop-a",))
    resp = client.post(
        "/token", data={"grant_type": JWT_BEARER, "assertion": first["access_token"]}
    )
    assert_oauth_error(resp, 400, "invalid_grant")


def test_an_actor_token_is_single_use(client, subject, root) -> None:
    actor_token = subject(**actor_ref("hop-a"))
    assert (
        client.post("/token", data=hop_form(root["access_token"], actor_token)).status_code == 200
    )
    again = client.post("/token", data=hop_form(root["access_token"], actor_token))
    body = assert_oauth_error(again, 400, "invalid_request")
    assert body["error_description"] == "actor_token: the token has already been used"


def test_a_hop_names_its_task_or_none(hop, root) -> None:
    assert_oauth_error(
        hop(root["access_token"], "hop-a", task_id="task-else"), 400, "invalid_request"
    )
    assert hop(root["access_token"], "hop-a", task_id=root["task_id"]).status_code == 200


def test_revoking_a_middle_hop_revokes_those_below_not_above(client, hop, root, svc) -> None:
    hops = chain(hop, root["access_token"], ACTORS[:3])
    middle = hops[1]["access_token"]
    assert client.post("/revoke", data={"token": middle}).status_code == 200

    def active(token: str) -> bool:
        return bool(introspect(client, token).get_json()["active"])

    assert active(root["access_token"]) and active(hops[0]["access_token"])
    assert not active(middle) and not active(hops[2]["access_token"])
    feed = svc.redis.xrange(keys.REVOCATION_FEED, "-", "+")
    parents = [f.get("p") for _, f in feed if f.get("k") == "jti"]
    assert len(parents) == 2 and parents[1]  # the middle hop, then the one below it
    (event,) = [e for e in stream_events(svc) if e.get("event") == "grant.revoked"]
    assert len(event["descendants"]) == 1


def test_a_hop_dies_with_any_grant_above_it(client, hop, root, svc) -> None:
    """However a link above goes (here its hash alone, as a bulk clean-up might leave it),
    introspection answers inactive for every hop below it."""
    hops = chain(hop, root["access_token"], ACTORS[:2])
    info = introspect(client, hops[0]["access_token"]).get_json()
    svc.redis.delete(keys.grant(info["jti"]))
    assert introspect(client, hops[1]["access_token"]).get_json() == {"active": False}
    assert_oauth_error(hop(hops[1]["access_token"], "hop-c"), 400, "invalid_request")


def test_completing_the_root_task_ends_every_hop(client, hop, root) -> None:
    hops = chain(hop, root["access_token"], ACTORS[:2])
    by_hop = client.post(
        "/tasks/complete", headers={"Authorization": f"Bearer {hops[0]['access_token']}"}
    )
    assert by_hop.status_code == 403  # a hop acts for the owner; it does not end the task
    done = client.post(
        "/tasks/complete", headers={"Authorization": f"Bearer {root['access_token']}"}
    )
    assert done.status_code == 200
    for token in (root["access_token"], *(h["access_token"] for h in hops)):
        assert introspect(client, token).get_json() == {"active": False}
    assert_oauth_error(hop(root["access_token"], "hop-c"), 400, "invalid_request")


def test_a_hop_of_a_suspended_subject_is_refused(client, hop, root, svc) -> None:
    svc.redis.hset(keys.IDENTITY_STATE, ROOT, '{"state":"suspended","at":0}')
    resp = hop(root["access_token"], "hop-a")
    assert_oauth_error(resp, 400, "invalid_request")


def test_actor_parameters_come_together(client, root, subject) -> None:
    form = hop_form(root["access_token"], subject(**actor_ref("hop-a")))
    del form["actor_token_type"]
    assert_oauth_error(client.post("/token", data=form), 400, "invalid_request")
    form = hop_form(root["access_token"], subject(**actor_ref("hop-a")), actor_token_type="x")
    assert_oauth_error(client.post("/token", data=form), 400, "invalid_request")


def test_may_act_must_name_a_known_identity(exchange) -> None:
    assert_oauth_error(exchange(may_act="nobody-here", task_id="t-1"), 400, "invalid_request")


def test_hop_audience_stays_within_a_narrowed_parent(hop, issued, client) -> None:
    both = issued(audience=[DEPLOY_AUD, "https://status.acme.example"], task_id="task-two")
    (first,) = chain(hop, both["access_token"], ("hop-a",), audience=DEPLOY_AUD)
    resp = hop(first["access_token"], "hop-b", audience="https://status.acme.example")
    assert_oauth_error(resp, 400, "invalid_target")
