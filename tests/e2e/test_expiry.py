"""Short-lived grants expire by Redis TTL and the worker's sweep clears every index."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests

from broker.store import keys as K
from tests.support.clocks import wait_until
from tests.support.stack import EXPIRY_IDENTITY, EXPIRY_REF, LOCAL, introspect, mint, post_token

pytestmark = pytest.mark.e2e

COUNT = 200
TASKS = 4


def test_two_hundred_short_grants_expire_through_the_worker(stack, dev_issuer, peek):
    prefix = "task-c-" + secrets.token_hex(4)
    tasks = [f"{prefix}-{i}" for i in range(TASKS)]

    def one(i: int) -> dict[str, object]:
        with requests.Session() as s:
            s.trust_env = False
            resp = post_token(
                stack,
                mint(dev_issuer, ref=EXPIRY_REF),
                s,
                scope="deploy:read",
                requested_lifetime="2",
                task_id=tasks[i % TASKS],
            )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(pool.map(one, range(COUNT)))
    assert all(b["expires_in"] == 2 for b in issued)
    claims = [
        jwt.decode(str(b["access_token"]), options={"verify_signature": False}) for b in issued
    ]
    assert {c["sub"] for c in claims} == {EXPIRY_IDENTITY}
    jtis = [str(c["jti"]) for c in claims]
    members = [f"{c['jti']} {c['task_id']} {EXPIRY_IDENTITY}" for c in claims]
    last_exp = max(int(c["exp"]) for c in claims)

    # While live: the grants and their index entries exist. On a loaded machine issuing 200
    # grants can take longer than their 2 s life, so only those not yet expired are checked.
    still_live = [str(c["jti"]) for c in claims if c["exp"] > time.time() + 0.5]
    if still_live:
        assert peek.exists(*[K.grant(j) for j in still_live]) == len(still_live)
        scores = peek.zmscore(K.identity_index(EXPIRY_IDENTITY), still_live)
        assert all(s is not None for s in scores)

    def all_cleared() -> bool:
        pipe = peek.pipeline(transaction=False)
        pipe.exists(*[K.grant(j) for j in jtis])
        pipe.zmscore(K.EXPIRY_INDEX, members)
        pipe.zcard(K.identity_index(EXPIRY_IDENTITY))
        for task in tasks:
            pipe.zcard(K.task_index(task))
        grants, scores, *counts = pipe.execute()
        return grants == 0 and all(s is None for s in scores) and not any(counts)

    # exp + TTL, plus a 1 s sweep interval and the job's run: a few seconds at most.
    deadline = last_exp + 6 - time.time()
    assert wait_until(all_cleared, timeout=max(deadline, 1.0), interval=0.25), (
        "expired grants left behind: "
        f"{peek.exists(*[K.grant(j) for j in jtis])} grant keys, "
        f"{sum(s is not None for s in peek.zmscore(K.EXPIRY_INDEX, members))} expiry members"
    )
    cleared_after = time.time() - last_exp
    assert cleared_after < 6, cleared_after
    # Nothing expired lingers anywhere in the expiry index (a 2 s grace for the next sweep).
    assert peek.zcount(K.EXPIRY_INDEX, "-inf", time.time() - 2) == 0
    for key in (
        K.identity_index(EXPIRY_IDENTITY),
        *(K.task_index(t) for t in tasks),
    ):
        assert peek.exists(key) == 0 or peek.zcard(key) == 0

    # The tokens are inactive, and the expiries are in the task's audit trail.
    assert introspect(stack, str(issued[0]["access_token"])).json() == {"active": False}
    audit = LOCAL.get(
        stack.url + "/admin/audit",
        params={"task": tasks[0], "limit": "1000"},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    ).json()["events"]
    expired = {e["jti_hmac"] for e in audit if e["event"] == "grant.expired"}
    assert expired == {
        LOCAL.post(
            stack.url + "/admin/audit/hash",
            json={"value": str(c["jti"])},
            headers={"Authorization": f"Bearer {stack.admin_token}"},
            timeout=10,
        ).json()["jti_hmac"]
        for c in claims
        if c["task_id"] == tasks[0]
    }
