"""Delegation chains through gunicorn and the RQ worker (RFC 8693 actor_token, act, may_act):
three hops and a refused fourth, a widening hop refused, a may_act token without an actor
refused, revoking a middle hop ends the hops below it and none above, and completing the
root task ends every hop within 2 s."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.support.clocks import wait_until
from tests.support.delegation import ACTORS, actor_ref, hop_form
from tests.support.stack import LOCAL, introspect, issue, mint

pytestmark = pytest.mark.e2e


def post_hop(stack: Any, dev_issuer: Any, subject_token: str, actor: str | None, **extra: Any):
    actor_token = mint(dev_issuer, **actor_ref(actor)) if actor else None
    return LOCAL.post(
        stack.url + "/token", data=hop_form(subject_token, actor_token, **extra), timeout=10
    )


def chain(stack: Any, dev_issuer: Any, root_token: str, actors: tuple[str, ...]) -> list[str]:
    tokens, token = [], root_token
    for actor in actors:
        resp = post_hop(stack, dev_issuer, token, actor, scope="deploy:read")
        assert resp.status_code == 200, resp.text
        token = resp.json()["access_token"]
        tokens.append(token)
    return tokens


def active(stack: Any, token: str) -> bool:
    return bool(introspect(stack, token).json()["active"])


def root(stack: Any, dev_issuer: Any, **extra: Any) -> dict[str, Any]:
    task = "task-chain-" + secrets.token_hex(4)
    return issue(stack, dev_issuer, task_id=task, scope="deploy:read deploy:write", **extra)


def test_three_hops_and_a_refused_fourth(stack, dev_issuer):
    top = root(stack, dev_issuer)
    hops = chain(stack, dev_issuer, top["access_token"], ACTORS[:3])
    info = introspect(stack, hops[-1]).json()
    assert info["active"] is True and info["sub"] == "acme-app-deploy"
    assert info["act"] == {"sub": "hop-c", "act": {"sub": "hop-b", "act": {"sub": "hop-a"}}}
    assert info["task_id"] == top["task_id"]

    fourth = post_hop(stack, dev_issuer, hops[-1], "hop-d")
    assert fourth.status_code == 400
    assert fourth.json()["error"] == "invalid_request"
    assert "maximum depth" in fourth.json()["error_description"]

    widened = post_hop(stack, dev_issuer, hops[0], "hop-d", scope="deploy:write")
    assert widened.status_code == 400 and widened.json()["error"] == "invalid_scope"


def test_may_act_token_without_an_actor_is_refused(stack, dev_issuer):
    named = root(stack, dev_issuer, may_act="hop-b")
    alone = post_hop(stack, dev_issuer, named["access_token"], None)
    assert alone.status_code == 400 and alone.json()["error"] == "invalid_request"
    # A workload token that carries may_act is refused as a plain subject too.
    claimed = LOCAL.post(
        stack.url + "/token",
        data=hop_form(mint(dev_issuer, may_act={"sub": "hop-a"}), None)
        | {"subject_token_type": "urn:ietf:params:oauth:token-type:jwt"},
        timeout=10,
    )
    assert claimed.status_code == 400 and claimed.json()["error"] == "invalid_request"
    wrong = post_hop(stack, dev_issuer, named["access_token"], "hop-a")
    assert wrong.status_code == 400
    assert post_hop(stack, dev_issuer, named["access_token"], "hop-b").status_code == 200


def test_revoking_a_middle_hop_ends_those_below_not_above(stack, dev_issuer):
    top = root(stack, dev_issuer)
    first, middle, last = chain(stack, dev_issuer, top["access_token"], ACTORS[:3])
    assert LOCAL.post(stack.url + "/revoke", data={"token": middle}, timeout=10).status_code == 200
    assert not active(stack, middle) and not active(stack, last)
    assert active(stack, first) and active(stack, top["access_token"])


def test_completing_the_root_task_ends_every_hop_within_2s(stack, dev_issuer):
    top = root(stack, dev_issuer)
    hops = chain(stack, dev_issuer, top["access_token"], ACTORS[:3])
    done = LOCAL.post(
        stack.url + "/tasks/complete",
        headers={"Authorization": f"Bearer {top['access_token']}"},
        timeout=10,
    )
    assert done.status_code == 200, done.text

    def every_hop_inactive() -> bool:
        return not any(active(stack, t) for t in (top["access_token"], *hops))

    assert wait_until(every_hop_inactive, timeout=2.0), "a hop outlived its root task"
