"""Suite 5: abuse limits on the token endpoint, against the HTTP contract:

- 429 with Retry-After (seconds until the window resets), an OAuth JSON error, no-store,
  no token, one audit event;
- per client address before anything is parsed; per configured issuer (from the unverified
  `iss`) before the signature check; per *verified* identity after it, never per claimed
  identity, so forged tokens in a victim's name cannot lock the victim out;
- a quota of live grants per identity (revoking one frees a slot);
- an identity that keeps being denied for reaching beyond its allowance is flagged with an
  audit event and, when configured, suspended (its live grants end).

Configured through `broker.limits` in the YAML; skipped with "waiting for abuse limits" on a
broker whose configuration does not have them."""

from __future__ import annotations

import concurrent.futures
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from broker.dev.issuer import github_claims
from broker.store import keys
from tests.support.forms import deploy_form
from tests.support.hostile import ObservedBroker, observe
from tests.support.jws import es256_sign, new_es256_key
from tests.support.redis import RedisDbs
from tests.support.servers import FaultIssuer
from tests.support.stack import AUDIENCE, TunedStack

WINDOW = 60
BASE = {
    "window_seconds": WINDOW,
    "per_address": 0,
    "per_issuer": 0,
    "per_identity": 0,
    "max_live_grants_per_identity": 0,
}


def limited(make_world: Any, **limits: Any) -> ObservedBroker:
    return make_world(limits={**BASE, **limits})


def assert_429(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 429, resp.get_json()
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= WINDOW
    body = resp.get_json()
    assert body["error"] == "temporarily_unavailable", body  # TooManyRequests' OAuth code
    assert body["error_description"] and "access_token" not in body
    return dict(body)


def post_from(w: ObservedBroker, address: str, form: dict[str, Any], **headers: str) -> Any:
    return w.client.post(
        "/token",
        data=form,
        environ_base={"REMOTE_ADDR": address},
        headers={"X-Request-Id": w.request_id(), **headers},
    )


def test_per_address_limit_is_429_and_other_addresses_are_unaffected(make_world) -> None:
    """Tokens that name the configured issuer (forged: any caller can send these) count
    against the client address before any signature work."""
    w = limited(make_world, per_address=5)

    def forged() -> dict[str, Any]:
        return w.form("token-exchange", es256_sign(new_es256_key(), w.header(), w.claims()))

    for _ in range(5):
        assert post_from(w, "10.0.0.1", forged()).status_code == 400
    form = forged()
    refusal = w.refused(
        lambda rid: w.client.post(
            "/token",
            data=form,
            environ_base={"REMOTE_ADDR": "10.0.0.1"},
            headers={"X-Request-Id": rid},
        ),
        token=form["subject_token"],
        status=429,
    )
    assert_429(w.client.post("/token", data=forged(), environ_base={"REMOTE_ADDR": "10.0.0.1"}))
    # A valid token from the same address is limited too; a forwarded-for header from the
    # same peer does not escape the limit.
    assert_429(post_from(w, "10.0.0.1", w.form("token-exchange", w.token())))
    spoofed = post_from(w, "10.0.0.1", forged(), **{"X-Forwarded-For": "192.0.2.77"})
    assert_429(spoofed)
    # Another address, and a valid exchange from it, are not affected.
    assert post_from(w, "10.0.0.2", forged()).status_code == 400
    assert post_from(w, "10.0.0.2", w.form("token-exchange", w.token())).status_code == 200
    observe(
        limit="per address (5/min)",
        status=429,
        retry_after=refusal.headers["Retry-After"],
        reason=refusal.event.get("reason"),
    )


def test_per_address_limit_covers_malformed_requests(make_world) -> None:
    w = limited(make_world, per_address=5)
    junk = [
        w.form("token-exchange", "a.b.c"),
        w.form("token-exchange", w.token(iss="https://unknown.example")),
        {"grant_type": "password"},
    ]
    statuses = [post_from(w, "10.0.0.3", junk[n % 3]).status_code for n in range(12)]
    observe(limit="per address, malformed requests", statuses=statuses)
    assert 429 in statuses, statuses


def test_per_identity_limit_counts_verified_identities_only(make_world) -> None:
    w = limited(make_world, per_identity=3)
    # Forged tokens in the victim's name (bad signature) are refused and never counted.
    for _ in range(20):
        forged = es256_sign(new_es256_key(), w.header(), w.claims())
        assert w.exchange(token=forged).status_code == 400
    assert not any(k.startswith(keys.PREFIX + "rl:identity:") for k in w.redis.scan_iter("*"))
    for n in range(3):
        ok = post_from(w, f"10.0.1.{n}", w.form("token-exchange", w.token()))
        assert ok.status_code == 200, ok.get_json()
    # The fourth, from yet another address: the limit follows the identity.
    refusal = w.refused(
        lambda rid: w.client.post(
            "/token",
            data=w.form("token-exchange", w.token()),
            environ_base={"REMOTE_ADDR": "10.0.1.9"},
            headers={"X-Request-Id": rid},
        ),
        token=None,
        status=429,
    )
    assert refusal.event.get("identity") == "acme-deploy"
    # Another identity has its own budget.
    other = w.exchange(token=w.token(ref="refs/heads/release"), scope="release:write")
    assert other.status_code == 200, other.get_json()
    observe(limit="per identity (3/min)", status=429, forged_not_counted=20)


def test_a_rate_limited_request_does_not_burn_its_jti(make_world) -> None:
    w = limited(make_world, per_identity=1)
    assert w.exchange().status_code == 200
    token = w.token()
    assert_429(w.exchange(token=token))
    w.redis.delete(keys.PREFIX + "rl:identity:acme-deploy")  # the window ends
    assert w.exchange(token=token).status_code == 200


def test_per_issuer_limit_applies_before_signature_work(make_world) -> None:
    w = limited(make_world, per_issuer=5)
    for _ in range(5):
        forged = es256_sign(new_es256_key(), w.header(kid="k-" + secrets.token_hex(4)), w.claims())
        assert w.exchange(token=forged).status_code == 400
    fetches = w.fetcher.calls
    forged = es256_sign(new_es256_key(), w.header(kid="k-" + secrets.token_hex(4)), w.claims())
    assert_429(w.exchange(token=forged))
    assert w.fetcher.calls == fetches, "a limited request still caused a JWKS fetch"
    # Tokens naming an issuer that is not configured never count against a configured one.
    assert_429(w.exchange())  # the configured issuer's window is spent
    unknown = w.exchange(token=w.token(iss="https://elsewhere.example"))
    assert unknown.status_code == 400


def test_live_grant_quota_per_identity(make_world) -> None:
    w = limited(make_world, max_live_grants_per_identity=3)
    tokens = []
    for _ in range(3):
        resp = w.exchange()
        assert resp.status_code == 200, resp.get_json()
        tokens.append(resp.get_json()["access_token"])
    grants_before = {k for k in w.redis.scan_iter(keys.PREFIX + "grant:*")}
    refusal = w.refused(
        lambda rid: w.post_token(w.form("token-exchange", w.token()), rid=rid),
        token=None,
        status=429,
    )
    assert refusal.event.get("reason") == "quota_exceeded"
    assert {k for k in w.redis.scan_iter(keys.PREFIX + "grant:*")} == grants_before
    # Another identity is not affected; revoking a token frees a slot.
    other = w.exchange(token=w.token(ref="refs/heads/release"), scope="release:write")
    assert other.status_code == 200
    assert w.client.post("/revoke", data={"token": tokens[0]}).status_code == 200
    assert w.exchange().status_code == 200
    observe(
        limit="live grants per identity (3)",
        status=429,
        reason="quota_exceeded",
        retry_after=refusal.headers.get("Retry-After"),
    )


def test_repeatedly_denied_identity_is_flagged_and_suspended(make_world) -> None:
    w = limited(make_world, denials_before_flag=3, auto_suspend=True)
    live = w.exchange().get_json()["access_token"]
    # Forged tokens in its name are not its denials.
    for _ in range(10):
        w.exchange(token=es256_sign(new_es256_key(), w.header(), w.claims()), scope="deploy:admin")
    assert not [e for e in w.stream() if e.get("event") == "identity.flagged"]
    for scope in ("deploy:admin", "root", "deploy:admin"):
        assert w.exchange(scope=scope).status_code == 400
    flagged = [e for e in w.stream() if e.get("event") == "identity.flagged"]
    assert len(flagged) == 1 and flagged[0]["identity"] == "acme-deploy", flagged
    resp = w.exchange()
    assert resp.status_code == 400 and "suspended" in resp.get_json()["error_description"]
    assert w.introspect(live).get_json() == {"active": False}
    # Another identity is untouched.
    other = w.exchange(token=w.token(ref="refs/heads/release"), scope="release:write")
    assert other.status_code == 200
    observe(
        limit="3 suspicious denials, auto_suspend",
        flagged=1,
        suspended=True,
        live_token_after="inactive",
    )


# -- over real HTTP: two gunicorn workers share the counters in Redis --------------------------


@pytest.fixture(scope="module")
def limited_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs
) -> Iterator[tuple[TunedStack, FaultIssuer]]:

    issuer = FaultIssuer().start()
    stack = TunedStack(
        tmp_path_factory.mktemp("limits-stack"),
        redis_dbs.url("security-limits"),
        issuer.issuer,
        limits={**BASE, "per_address": 20},
    ).start()
    try:
        yield stack, issuer
    finally:
        stack.stop()
        issuer.stop()


@pytest.mark.e2e
def test_e2e_per_address_limit_holds_across_workers(limited_stack) -> None:
    stack, issuer = limited_stack

    def one(_: int) -> tuple[int, str | None]:
        with requests.Session() as s:
            s.trust_env = False
            claims = github_claims(issuer=issuer.issuer, audience=AUDIENCE, now=time.time())
            resp = s.post(stack.url + "/token", data=deploy_form(issuer.mint(claims)), timeout=10)
            return resp.status_code, resp.headers.get("Retry-After")

    assert one(0)[0] == 200  # sequential first: the JWKS is fetched and mirrored once
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(39)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 19, statuses  # exactly the limit (20), fleet-wide
    assert statuses.count(429) == 20
    assert all(int(r) >= 1 for s, r in results if s == 429)
    db = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        assert db.zcard(keys.EXPIRY_INDEX) == 20  # no grant behind a 429
    finally:
        db.close()
    observe(limit="e2e per address (20/min, gunicorn x2)", ok=20, limited=20)
