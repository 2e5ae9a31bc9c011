"""Suite 1d: a handful of hostile requests over real HTTP to gunicorn (2 workers) + worker,
configured only by environment and YAML. What the in-process matrix proves, re-checked where
the process boundary matters: the access log, the Redis stream written by a real node,
413 from the WSGI server path, and egress (a listener named in jku/x5u, and the issuer's own
request log, which must show only discovery and the JWKS)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from broker.dev.issuer import github_claims
from broker.domain.audit_hmac import token_hmac
from broker.store import keys
from broker.store import keys as K
from tests.support.audit import use_broker_audit_key
from tests.support.forms import DEPLOY_REQUEST, bearer_form, deploy_form
from tests.support.hostile import observe
from tests.support.jws import (
    b64url,
    es256_sign,
    hs256_sign,
    new_es256_key,
    public_pem,
    secret_fragments,
)
from tests.support.redis import RedisDbs
from tests.support.servers import CountingListener, FaultIssuer
from tests.support.stack import AUDIENCE, TunedStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs) -> Iterator[dict[str, Any]]:
    issuer = FaultIssuer().start()
    listener = CountingListener().start()
    url = redis_dbs.url("security-hostile-http")
    stack = TunedStack(tmp_path_factory.mktemp("hostile-stack"), url, issuer.issuer).start()
    db = redis.Redis.from_url(url, decode_responses=True)
    use_broker_audit_key(stack.env(), db)  # events carry token HMACs under the broker's key
    http = requests.Session()
    http.trust_env = False
    try:
        yield {"stack": stack, "issuer": issuer, "listener": listener, "db": db, "http": http}
    finally:
        stack.stop()
        issuer.stop()
        listener.stop()
        db.close()


def _claims(issuer: FaultIssuer, **overrides: Any) -> dict[str, Any]:
    c = github_claims(issuer=issuer.issuer, audience=AUDIENCE, now=time.time())
    c.update(overrides)
    return c


def _grant_keys(db: redis.Redis) -> set[str]:
    out: set[str] = set()
    for pattern in (
        "errand:*:grant:*",
        "errand:*:task:*",
        "errand:*:grants",
        "errand:owner:*",
        "errand:replay:*",
        K.EXPIRY_INDEX,
    ):
        out |= set(db.scan_iter(pattern))
    return out


def _identity_counters(db: redis.Redis) -> dict[str, str | None]:
    """Rate and denial counters keyed by an identity (not by address or issuer)."""
    names = [
        k
        for k in db.scan_iter("errand:rl:*")
        if not k.startswith(("errand:rl:addr:", "errand:rl:issuer:"))
    ]
    return {k: db.get(k) for k in names}


def _events_for(db: redis.Redis, rid: str) -> list[dict[str, Any]]:
    events = [json.loads(f["e"]) for _id, f in db.xrange(keys.AUDIT_STREAM)]
    return [e for e in events if e.get("request_id") == rid]


def _hostile(env: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], int, str]]:
    """name -> (token, form, expected status, expected error)."""
    issuer, listener, stack, http = env["issuer"], env["listener"], env["stack"], env["http"]
    key = issuer.keys[0]
    attacker = new_es256_key()
    header = {"alg": "ES256", "typ": "JWT", "kid": key.kid}
    real = issuer.mint(_claims(issuer))
    issued = http.post(stack.url + "/token", data=deploy_form(real), timeout=10)
    assert issued.status_code == 200, issued.text
    access = issued.json()["access_token"]
    cases: dict[str, tuple[str, dict[str, Any], int, str]] = {}

    def te(name: str, token: str, status: int = 400, error: str = "invalid_request", **f: Any):
        cases[name] = (token, deploy_form(token, **f), status, error)

    none = es256_sign(key, {**header, "alg": "none"}, _claims(issuer))
    te("alg_none", none.rsplit(".", 1)[0] + ".AAAA")
    te(
        "hs256_with_issuer_public_key",
        hs256_sign(public_pem(key), {**header, "alg": "HS256"}, _claims(issuer)),
    )
    te(
        "jku_x5u_jwk_x5c_to_listener",
        es256_sign(
            attacker,
            {
                **header,
                "kid": attacker.kid,
                "jku": listener.url + "/jwks",
                "x5u": listener.url + "/x5u",
                "jwk": attacker.public_jwk(),
                "x5c": [b64url(b"x" * 64)],
            },
            _claims(issuer),
        ),
    )
    te(
        "kid_path_traversal",
        es256_sign(key, {**header, "kid": "../../etc/passwd"}, _claims(issuer)),
    )
    te("broker_access_token_as_subject", access)
    te("id_token_other_audience", issuer.mint(_claims(issuer, aud="another-app")))
    te(
        "nested_jwt",
        es256_sign(key, {**header, "cty": "JWT"}, issuer.mint(_claims(issuer)).encode()),
    )
    te("log_injection_task_id", issuer.mint(_claims(issuer)), task_id='x\r\n{"event":"fake"}')
    te("scope_wildcard", issuer.mint(_claims(issuer)), status=400, error="invalid_scope", scope="*")
    bearer = es256_sign(key, {**header, "alg": "none"}, _claims(issuer)).rsplit(".", 1)[0] + ".AA"
    cases["jwt_bearer_alg_none"] = (
        bearer,
        bearer_form(bearer, audience=DEPLOY_REQUEST["audience"]),
        400,
        "invalid_grant",
    )
    return cases


def _check_refusal(
    env: dict[str, Any],
    name: str,
    resp: requests.Response,
    rid: str,
    token: str | None,
    status: int,
    error: str,
    before: set[str],
    counters: dict[str, str | None],
) -> None:
    assert resp.status_code == status, (name, resp.text)
    assert resp.headers["Content-Type"].startswith("application/json"), name
    assert resp.headers["Cache-Control"] == "no-store", name
    assert "<html" not in resp.text.lower() and "Traceback" not in resp.text
    body = resp.json()
    assert body["error"] == error and body["error_description"], (name, body)
    assert "access_token" not in body
    assert _grant_keys(env["db"]) == before, f"{name}: a refused request wrote state"
    events = _events_for(env["db"], rid)
    assert len(events) == 1, (name, events)
    assert events[0]["outcome"] == "denied"
    # Identity counters move only for the identity the token was verified as.
    verified = events[0].get("identity")
    own = {f"errand:rl:identity:{verified}", f"errand:rl:denials:{verified}"}
    after = _identity_counters(env["db"])
    moved = {k for k in after.keys() | counters.keys() if after.get(k) != counters.get(k)}
    assert moved <= own, (name, moved)
    if token is not None:
        assert events[0]["token_hmac"] == token_hmac(token), name
        for fragment in secret_fragments(token):
            assert fragment not in json.dumps(events[0])
    observe(case=name, status=resp.status_code, error=body["error"], reason=events[0].get("reason"))


def test_hostile_tokens_over_http(env: dict[str, Any]) -> None:
    stack, http, db = env["stack"], env["http"], env["db"]
    cases = _hostile(env)
    for name, (token, form, status, error) in cases.items():
        before, counters = _grant_keys(db), _identity_counters(db)
        rid = f"hostile-{name}-{secrets.token_hex(3)}"
        resp = http.post(stack.url + "/token", data=form, headers={"X-Request-Id": rid}, timeout=10)
        _check_refusal(env, name, resp, rid, token, status, error, before, counters)
    # No egress: the listener named in jku/x5u saw nothing; the issuer saw only discovery
    # and its JWKS.
    assert env["listener"].hits == []
    assert set(env["issuer"].paths) <= {"/.well-known/openid-configuration", "/jwks"}
    # No token reaches the server's logs (gunicorn access log and the app's log lines).
    stack_logs = (stack.workdir / "web.log").read_text(errors="replace")
    for token, _form, _s, _e in cases.values():
        for fragment in secret_fragments(token):
            assert fragment not in stack_logs


def test_oversized_and_non_utf8_bodies_over_http(env: dict[str, Any]) -> None:
    stack, http, db = env["stack"], env["http"], env["db"]
    before = _grant_keys(db)
    big = http.post(
        stack.url + "/token",
        data=deploy_form("a.b.c", padding="p" * (70 * 1024)),
        timeout=10,
    )
    assert big.status_code == 413, big.text
    assert big.headers["Content-Type"].startswith("application/json")
    assert big.json()["error"] == "invalid_request"
    assert big.headers["Cache-Control"] == "no-store"
    rid = "hostile-raw-" + secrets.token_hex(3)
    raw = http.post(
        stack.url + "/token",
        data=b"grant_type=\xff\xfe&subject_token=\xc0\xaf.\xff.\xfe&scope=\x80",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Request-Id": rid},
        timeout=10,
    )
    assert raw.status_code == 400 and raw.json()["error"] in (
        "invalid_request",
        "unsupported_grant_type",
    )
    assert len(_events_for(db, rid)) == 1
    assert _grant_keys(db) == before
    # A declared Content-Length over the limit is refused without reading the body.
    huge = http.post(
        stack.url + "/token",
        data=iter([b"grant_type=x&" + b"a" * 1024] * 80),  # chunked, 80 KiB
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert huge.status_code in (400, 413), huge.text
    assert huge.headers["Content-Type"].startswith("application/json")
    observe(case="70 KiB body", status=big.status_code, chunked_80KiB=huge.status_code)
