"""Story rs: a Flask resource server protected by errand_rs.flask.ErrandAuth, in front of a
real broker (gunicorn + RQ worker, signing keys in Redis sealed with a KEK), using the real
JWKS and the real GET /revocations feed with the demo-rs client's credentials.

- a valid token is accepted, scopes are enforced;
- POST /revoke, POST /tasks/complete, `errand revoke --identity` and `errand revoke-all`
  reach the resource server in under a second (measured from the revoking response);
- `errand keys rotate --emergency` makes it reject old tokens once its JWKS refreshes;
- with the broker stopped it fails closed after feed_grace_seconds, and recovers.

Measured delays are printed (run with `-s` to see them)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import redis
import requests
from flask import Flask, g

from broker.tokens.keyrecord import new_kek
from errand_rs import ErrandVerifier, FeedUnavailable, InvalidToken, RevocationFeed, TokenRevoked
from errand_rs.feed import parse_page
from errand_rs.flask import ErrandAuth
from tests.support.redis import RedisDbs
from tests.support.stack import (
    CLIENT_ID,
    DEPLOY_AUD,
    ERRAND,
    EXPIRY_IDENTITY,
    EXPIRY_REF,
    GUNICORN_CONF,
    LOCAL,
    Stack,
    free_port,
    mint,
    post_token,
)

pytestmark = pytest.mark.e2e

# What the docs promise while the feed is healthy: poll interval + request latency.
POLL_INTERVAL_SECONDS = 0.5
MAX_REVOCATION_DELAY_SECONDS = 1.0
FEED_GRACE_SECONDS = 2.0
# The broker's nodes re-read key state from Redis this often (RedisKeyRing.refresh_seconds).
BROKER_KEY_REFRESH_SECONDS = 2.0


def _report(story: str, **seconds: float) -> None:
    parts = ", ".join(f"{k}={v * 1000:.0f} ms" for k, v in seconds.items())
    print(f"\n[errand_rs e2e] {story}: {parts}")


class RsStack(Stack):
    """The e2e stack with signing keys in Redis (so keys can be rotated), and a web tier that
    can be stopped and started again on the same port."""

    def env(self) -> dict[str, str]:
        env = super().env()
        kek = self.workdir / "kek"
        if not kek.exists():
            kek.write_text(new_kek())
            kek.chmod(0o600)
        env.pop("ERRAND_SIGNING_KEY_DIR", None)
        env.update(ERRAND_KEY_ENCRYPTION_KEY_FILE=str(kek), ERRAND_RECONCILE_AFTER_SECONDS="2")
        return env

    def stop_web(self) -> float:
        """SIGTERM gunicorn, which closes its listening socket at once and lets its workers
        finish; returns the monotonic time the signal was sent. See wait_web_stopped()."""
        signalled = time.monotonic()
        self.procs["web"].terminate()
        return signalled

    def wait_web_stopped(self) -> None:
        proc = self.procs["web"]
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in its process group

    def start_web(self, timeout: float = 30.0) -> None:
        self._spawn(
            "web",
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "broker.app:create_app()"],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["web"].poll() is not None:
                raise RuntimeError(f"web exited:\n{self.logs()}")
            try:
                if LOCAL.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the broker did not become ready again:\n{self.logs()}")


@pytest.fixture(scope="module")
def rs_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: Any
) -> Iterator[RsStack]:
    url = redis_dbs.url("e2e-resource-server")
    running = RsStack(tmp_path_factory.mktemp("rs-stack"), url, dev_issuer.issuer).start()
    try:
        yield running
    finally:
        running.stop()
        redis.Redis.from_url(url).flushdb()


@dataclass
class ResourceServer:
    """The protected Flask app (driven in-process with its test client) and its errand_rs parts."""

    app: Flask
    verifier: ErrandVerifier
    feed: RevocationFeed

    def get(self, token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.app.test_client().get("/deployments", headers=headers)

    def post(self, token: str) -> Any:
        return self.app.test_client().post(
            "/deployments", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def rs(rs_stack: RsStack) -> Iterator[ResourceServer]:
    # The library's defaults, except a short grace period so the outage story is quick.
    verifier = ErrandVerifier(rs_stack.url, DEPLOY_AUD)
    feed = RevocationFeed(
        rs_stack.url,
        CLIENT_ID,
        rs_stack.client_secret,
        poll_interval_seconds=POLL_INTERVAL_SECONDS,
        feed_grace_seconds=FEED_GRACE_SECONDS,
    )
    app = Flask("deploy-api")
    auth = ErrandAuth(app, verifier=verifier, feed=feed, realm="deploy")

    @app.get("/deployments")
    @auth.require(scopes=["deploy:read"])
    def list_deployments() -> dict[str, Any]:
        token = g.errand_token
        return {"task": token.task_id, "sub": token.subject, "epoch": token.epoch}

    @app.post("/deployments")
    @auth.require(scopes="deploy:write")
    def deploy() -> dict[str, Any]:
        return {"task": g.errand_token.task_id}

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, Any], int]:
        status = feed.status()
        return status, 200 if status["healthy"] else 503

    feed.start()
    assert feed.wait_synced(10), "the first /revocations sync did not succeed"
    assert verifier.jwks.prefetch(), "the JWKS could not be fetched"
    try:
        yield ResourceServer(app, verifier, feed)
    finally:
        feed.stop()


def _task() -> str:
    return "rs-" + secrets.token_hex(6)


def issue(stack: Stack, dev_issuer: Any, *, ref: str | None = None, **extra: Any) -> dict[str, Any]:
    subject = mint(dev_issuer, ref=ref) if ref else mint(dev_issuer)
    resp = post_token(stack, subject, **extra)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def token_for(stack: Stack, dev_issuer: Any, **extra: Any) -> str:
    extra.setdefault("task_id", _task())
    extra.setdefault("scope", "deploy:read deploy:write")
    return str(issue(stack, dev_issuer, **extra)["access_token"])


def cli(stack: Stack, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    out = subprocess.run(
        [ERRAND, *args, "--url", stack.url, "--admin-token-file", str(stack.admin_token_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return dict(json.loads(out.stdout))


@dataclass
class Delay:
    from_response: float  # what the docs promise: after the revoking call has answered
    from_request: float  # from sending the revoking call


def until_rejected(
    rs: ResourceServer, token: str, revoke: Callable[[], None], *, timeout: float = 5.0
) -> Delay:
    """Seconds until the resource server answers 401 for a token it accepted just before."""
    assert rs.get(token).status_code == 200
    sent = time.monotonic()
    revoke()
    answered = time.monotonic()
    while time.monotonic() < answered + timeout:
        resp = rs.get(token)
        if resp.status_code == 401:
            now = time.monotonic()
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
            assert resp.json["error_description"] == "The access token has been revoked."
            return Delay(now - answered, now - sent)
        assert resp.status_code == 200, resp.data
        time.sleep(0.005)
    pytest.fail(f"the resource server still accepts the token {timeout} s after the revocation")


def revoked_reason(rs: ResourceServer, token: str) -> str:
    with pytest.raises(TokenRevoked) as info:
        rs.verifier.verify(token, feed=rs.feed)
    return info.value.reason


# -- stories ----------------------------------------------------------------------------------
def test_real_tokens_and_feed_match_what_the_library_expects(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    token = token_for(rs_stack, dev_issuer)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    jwks = LOCAL.get(rs_stack.url + "/.well-known/jwks.json", timeout=10)
    assert header["kid"] in {k["kid"] for k in jwks.json()["keys"]}
    assert "max-age=60" in jwks.headers["Cache-Control"]
    verified = rs.verifier.verify(token, feed=rs.feed, require_scopes="deploy:write")
    assert verified.epoch == rs.feed.epoch and verified.subject == "acme-app-deploy"
    assert verified.identity_type == "service" and verified.owner == "platform-team"
    assert verified.audiences == (DEPLOY_AUD,)

    # The feed: client_secret_basic with the introspection client's credentials only.
    assert LOCAL.get(rs_stack.url + "/revocations", timeout=10).status_code == 401
    wrong = LOCAL.get(
        rs_stack.url + "/revocations",
        params={"since": "0"},
        auth=(CLIENT_ID, "wrong-secret-0123456789"),
        timeout=10,
    )
    assert wrong.status_code == 401
    assert LOCAL.post(rs_stack.url + "/revoke", data={"token": token}, timeout=10).ok
    right = LOCAL.get(
        rs_stack.url + "/revocations",
        params={"since": "0", "limit": "1000"},
        auth=(CLIENT_ID, rs_stack.client_secret),
        timeout=10,
    )
    assert right.status_code == 200
    assert right.headers.get("Cache-Control") == "no-store"
    page = parse_page(right.json())  # what the library accepts, or FeedError
    assert abs(page.server_time - time.time()) < 60
    assert not page.more
    mine = [e for e in page.entries if e.kind == "jti" and e.value == verified.jti]
    assert len(mine) == 1 and mine[0].exp == verified.exp
    # The cursor is opaque to the library; the broker hands out Redis stream ids.
    again = LOCAL.get(
        rs_stack.url + "/revocations",
        params={"since": page.cursor},
        auth=(CLIENT_ID, rs_stack.client_secret),
        timeout=10,
    )
    assert again.status_code == 200 and parse_page(again.json()).cursor == page.cursor


def test_valid_token_is_accepted_and_scopes_are_enforced(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    task = _task()
    writer = token_for(rs_stack, dev_issuer, task_id=task)
    ok = rs.post(writer)
    assert ok.status_code == 200 and ok.json == {"task": task}
    listed = rs.get(writer)
    assert listed.status_code == 200 and listed.json["sub"] == "acme-app-deploy"

    reader = token_for(rs_stack, dev_issuer, scope="deploy:read")
    assert rs.get(reader).status_code == 200
    denied = rs.post(reader)
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    assert 'scope="deploy:write"' in denied.headers["WWW-Authenticate"]

    missing = rs.get(None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == (
        'Bearer realm="deploy"'
    )
    tampered = writer[:-6] + ("AAAAAA" if not writer.endswith("AAAAAA") else "BBBBBB")
    assert rs.get(tampered).status_code == 401
    assert rs.app.test_client().get("/readyz").status_code == 200


def test_revoke_reaches_the_resource_server_in_under_a_second(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    delays = []
    for _ in range(5):
        token = token_for(rs_stack, dev_issuer)
        other = token_for(rs_stack, dev_issuer)

        def revoke(token: str = token) -> None:
            resp = LOCAL.post(rs_stack.url + "/revoke", data={"token": token}, timeout=10)
            assert resp.status_code == 200, resp.text

        delays.append(until_rejected(rs, token, revoke))
        assert revoked_reason(rs, token) == "revoked_jti"
        assert rs.get(other).status_code == 200  # only that token
    worst = max(d.from_response for d in delays)
    _report(
        "POST /revoke -> 401 (5 runs)",
        max_after_response=worst,
        max_after_request=max(d.from_request for d in delays),
    )
    assert worst < MAX_REVOCATION_DELAY_SECONDS


def test_task_completion_reaches_the_resource_server_in_under_a_second(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    task = _task()
    first = token_for(rs_stack, dev_issuer, task_id=task)
    second = token_for(rs_stack, dev_issuer, task_id=task)
    other_task = token_for(rs_stack, dev_issuer)

    def complete() -> None:
        resp = LOCAL.post(
            rs_stack.url + "/tasks/complete",
            headers={"Authorization": f"Bearer {first}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text

    delay = until_rejected(rs, second, complete)
    _report(
        "POST /tasks/complete -> 401",
        after_response=delay.from_response,
        after_request=delay.from_request,
    )
    assert delay.from_response < MAX_REVOCATION_DELAY_SECONDS
    # Every token of the task, the one that completed it too, and nothing else. (The task
    # entry comes first; the worker's clean-up then publishes each grant's jti as well.)
    assert revoked_reason(rs, first) in {"revoked_task", "revoked_jti"}
    assert revoked_reason(rs, second) in {"revoked_task", "revoked_jti"}
    assert rs.get(other_task).status_code == 200
    # The broker refuses new tokens for a completed task.
    refused = post_token(rs_stack, mint(dev_issuer), task_id=task)
    assert refused.status_code != 200


def test_operator_identity_revocation_reaches_the_resource_server(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    # The expiry identity has its own owner and indexes; the deploy identity is the control.
    victims = [
        token_for(rs_stack, dev_issuer, ref=EXPIRY_REF, scope="deploy:read") for _ in range(2)
    ]
    bystander = token_for(rs_stack, dev_issuer)
    body: dict[str, Any] = {}

    def revoke_identity() -> None:
        body.update(
            cli(
                rs_stack,
                "revoke",
                "--identity",
                EXPIRY_IDENTITY,
                "--reason",
                "rs e2e: leaked runner",
                "--json",
            )
        )

    delay = until_rejected(rs, victims[0], revoke_identity)
    _report(
        "errand revoke --identity -> 401",
        after_cli_exit=delay.from_response,
        after_cli_start=delay.from_request,
    )
    assert body["revoked"] >= 2
    assert delay.from_response < MAX_REVOCATION_DELAY_SECONDS
    # Bulk revocations publish one exact entry per grant (no clock-dependent cut-off).
    assert revoked_reason(rs, victims[1]) == "revoked_jti"
    assert rs.get(bystander).status_code == 200
    # The cut-off is by issue time: a token issued after it is accepted again.
    time.sleep(1.1)
    fresh = token_for(rs_stack, dev_issuer, ref=EXPIRY_REF, scope="deploy:read")
    assert rs.get(fresh).status_code == 200


def test_revoke_all_reaches_the_resource_server(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    before = [token_for(rs_stack, dev_issuer) for _ in range(3)]
    old_epoch = rs.feed.epoch
    body: dict[str, Any] = {}

    def revoke_all() -> None:
        body.update(cli(rs_stack, "revoke-all", "--yes", "--reason", "rs e2e incident", "--json"))

    delay = until_rejected(rs, before[0], revoke_all)
    _report(
        "errand revoke-all -> 401",
        after_cli_exit=delay.from_response,
        after_cli_start=delay.from_request,
    )
    assert delay.from_response < MAX_REVOCATION_DELAY_SECONDS
    assert body["epoch"] == rs.feed.epoch > old_epoch
    for token in before:
        assert revoked_reason(rs, token) == "revoked_epoch"
    after = token_for(rs_stack, dev_issuer)
    resp = rs.get(after)
    assert resp.status_code == 200 and resp.json["epoch"] == body["epoch"]


def test_emergency_key_rotation_rejects_old_tokens_once_the_jwks_refreshes(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    old = token_for(rs_stack, dev_issuer)
    old_kid = jwt.get_unverified_header(old)["kid"]
    assert rs.get(old).status_code == 200
    # A second verifier, as another resource server with a 5 s JWKS cache that sees only
    # old tokens: it learns of the rotation when its cached key set expires.
    passive = ErrandVerifier(rs_stack.url, DEPLOY_AUD, jwks_cache_seconds=5)
    passive.verify(old, feed=rs.feed)

    out = cli(rs_stack, "keys", "rotate", "--emergency")
    rotated = time.monotonic()
    assert out["emergency"] is True and old_kid in out["retired_or_removed"]

    deadline = rotated + 5 + BROKER_KEY_REFRESH_SECONDS + 3
    while True:
        try:
            passive.verify(old, feed=rs.feed)
        except InvalidToken as err:
            assert err.reason == "unknown_kid"
            passive_delay = time.monotonic() - rotated
            break
        assert time.monotonic() < deadline, "old token still accepted after the JWKS expired"
        time.sleep(0.05)

    # The app's verifier (library defaults: the broker's max-age=60 caps the cache) learns of
    # the new key from the first token signed by it: an unknown kid causes one refetch (at
    # most once per 10 s cooldown), and the refetched set no longer holds the old key.
    time.sleep(BROKER_KEY_REFRESH_SECONDS + 0.5)  # every broker node signs with the new key
    fresh = token_for(rs_stack, dev_issuer)
    assert jwt.get_unverified_header(fresh)["kid"] == out["kid"]
    presented = time.monotonic()
    while rs.get(fresh).status_code != 200:
        assert time.monotonic() < presented + 15, "the new key was never fetched"
        time.sleep(0.1)
    new_kid_delay = time.monotonic() - presented
    resp = rs.get(old)
    assert resp.status_code == 401
    assert "signing key is unknown" in resp.json["error_description"]
    _report(
        "emergency rotation -> old token rejected",
        passive_5s_cache_after_rotate=passive_delay,
        new_kid_refetch_after_first_new_token=new_kid_delay,
    )
    assert passive_delay < 5 + BROKER_KEY_REFRESH_SECONDS + 1


def test_broker_down_fails_closed_after_grace_and_recovers(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    token = token_for(rs_stack, dev_issuer)
    assert rs.get(token).status_code == 200
    stopped = rs_stack.stop_web()
    try:
        # Within the grace period the last synced state still applies.
        assert rs.get(token).status_code == 200
        deadline = stopped + FEED_GRACE_SECONDS + 3
        while True:
            resp = rs.get(token)
            if resp.status_code == 401:
                closed_after = time.monotonic() - stopped
                age = rs.feed.seconds_since_sync()
                break
            assert time.monotonic() < deadline, "never failed closed"
            time.sleep(0.01)
        assert resp.json["error_description"] == "revocation feed unavailable"
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert rs.app.test_client().get("/readyz").status_code == 503
        with pytest.raises(FeedUnavailable):
            rs.verifier.verify(token, feed=rs.feed)
        # Accepted until feed_grace_seconds after the start of the last successful sync, which
        # was at most one poll interval (plus a request) before the broker went away.
        assert age is not None and FEED_GRACE_SECONDS < age < FEED_GRACE_SECONDS + 0.25
        assert closed_after > FEED_GRACE_SECONDS - POLL_INTERVAL_SECONDS - 0.3
        assert closed_after < FEED_GRACE_SECONDS + 0.5
    finally:
        rs_stack.wait_web_stopped()
        rs_stack.start_web()
    ready = time.monotonic()
    while rs.get(token).status_code != 200:
        assert time.monotonic() < ready + 5, "never recovered"
        time.sleep(0.01)
    recovered_after = time.monotonic() - ready
    _report(
        "broker stopped -> fail closed; back -> recovered",
        closed_after_sigterm=closed_after,
        last_sync_age_at_first_401=age,
        recovered_after_readyz=recovered_after,
    )
    # Back-off while failing is capped at max(poll, min(5, grace / 4)) = 0.5 s here.
    assert recovered_after < 2 * POLL_INTERVAL_SECONDS + 0.5


def test_feed_with_wrong_credentials_or_a_dead_port_fails_closed(
    rs_stack: RsStack, dev_issuer: Any, rs: ResourceServer
) -> None:
    token = token_for(rs_stack, dev_issuer)
    rs.verifier.verify(token, feed=rs.feed)
    feeds = [
        RevocationFeed(
            rs_stack.url, CLIENT_ID, "wrong-secret-0123456789", startup_wait_seconds=1.0
        ),
        RevocationFeed(
            rs_stack.url,
            CLIENT_ID,
            rs_stack.client_secret,
            startup_wait_seconds=1.0,
            revocations_url=f"http://127.0.0.1:{free_port()}/revocations",
        ),
    ]
    for feed in feeds:
        try:
            with pytest.raises(FeedUnavailable):
                rs.verifier.verify(token, feed=feed)
            assert not feed.healthy
        finally:
            feed.stop()
