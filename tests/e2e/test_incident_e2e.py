"""Incident response over real HTTP, gunicorn and RQ workers: revoke-all under load, a worker
killed during the fan-out, bulk revocation and revocation records through the CLI, and an
emergency key rotation with keys kept in Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests

from broker.dev.issuer import github_claims
from broker.store import keys as K
from broker.tokens.keyrecord import new_kek
from tests.support.forms import deploy_form
from tests.support.redis import RedisDbs
from tests.support.stack import AUDIENCE, CLIENT_ID, DEPLOY_AUD, ERRAND, Stack

pytestmark = pytest.mark.e2e


class KekStack(Stack):
    """The same stack with signing keys in Redis, sealed with a KEK, and a fast reconciler."""

    def env(self) -> dict[str, str]:
        env = super().env()
        kek = self.workdir / "kek"
        if not kek.exists():
            kek.write_text(new_kek())
        env.pop("ERRAND_SIGNING_KEY_DIR", None)
        env.update(ERRAND_KEY_ENCRYPTION_KEY_FILE=str(kek), ERRAND_RECONCILE_AFTER_SECONDS="2")
        return env

    def restart_worker(self) -> None:
        self._spawn("worker", [sys.executable, "-m", "workers"])

    def kill_worker(self) -> None:
        proc = self.procs["worker"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def kstack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: Any
) -> Iterator[KekStack]:
    url = redis_dbs.url("e2e-incident")
    running = KekStack(tmp_path_factory.mktemp("incident"), url, dev_issuer.issuer).start()
    try:
        yield running
    finally:
        running.stop()
        redis.Redis.from_url(url).flushdb()


@pytest.fixture
def db(kstack: KekStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(kstack.redis_url, decode_responses=True)
    yield client
    client.close()


def exchange(
    stack: Stack, dev_issuer: Any, session: requests.Session | None = None
) -> requests.Response:
    token = dev_issuer.mint(
        github_claims(issuer=dev_issuer.issuer, audience=AUDIENCE, environment=None)
    )
    return (session or requests).post(
        stack.url + "/token",
        data=deploy_form(token),
        timeout=10,
    )


def active(stack: Stack, token: str) -> bool:
    resp = requests.post(
        stack.url + "/introspect",
        data={"token": token},
        auth=(CLIENT_ID, stack.client_secret),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


def cli(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [ERRAND, *args, "--url", stack.url, "--admin-token-file", str(stack.admin_token_file)]
        if args[0] != "evidence" or args[1] != "verify"
        else [ERRAND, *args, "--url", stack.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert out.returncode == 0, out.stderr + out.stdout
    return out


def test_revoke_all_under_load(kstack: KekStack, dev_issuer: Any, db: redis.Redis) -> None:
    """Nothing minted before the cut survives; nothing after it is wrongly refused."""
    results: list[tuple[float, requests.Response]] = []
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                results.append((time.monotonic(), exchange(kstack, dev_issuer, s)))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t_cut = time.monotonic()
    out = cli(kstack, "revoke-all", "--yes", "--reason", "e2e incident", "--json")
    t_done = time.monotonic()
    body = json.loads(out.stdout)
    epoch = body["epoch"]
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()

    assert body["revoked"] >= 1
    statuses = {r.status_code for _, r in results}
    assert statuses <= {200, 503}, statuses
    refused = [r for _, r in results if r.status_code == 503]
    assert all(r.json()["error"] == "temporarily_unavailable" for r in refused)
    assert len(refused) <= 8  # only exchanges in flight at the cut may be asked to retry
    for started, resp in results:
        if resp.status_code != 200:
            continue
        token = resp.json()["access_token"]
        token_epoch = jwt.decode(token, options={"verify_signature": False})["epoch"]
        assert active(kstack, token) == (token_epoch >= epoch)
        if started > t_done:
            assert token_epoch >= epoch  # everything after the cut is issued normally
        if started < t_cut - 0.5:
            assert token_epoch < epoch
    # The worker's fan-out finishes and leaves only post-cut grants.
    deadline = time.time() + 20
    while time.time() < deadline and db.hget(K.fanout_progress(epoch), "done") != "1":
        time.sleep(0.1)
    assert db.hget(K.fanout_progress(epoch), "done") == "1"
    status = json.loads(cli(kstack, "revoke-all-status", str(epoch), "--json").stdout)
    assert int(status["progress"]["done"]) == 1
    for key in db.scan_iter("errand:*:grant:*"):
        assert int(db.hget(key, "p")) >= epoch


def _fill(db: redis.Redis, n: int) -> None:
    """Live grants written through the real grant-write script, pipelined, fast."""
    from broker.domain.models import Grant
    from scripts._bulk import BulkGrantWriter as RedisGrantStore

    now = int(time.time())
    epoch = int(db.get(K.EPOCH) or 0)
    grants = [
        Grant(
            jti=f"fill{i:08d}",
            identity_id="acme-app-deploy",
            identity_type="service",
            owner="platform-team",
            task_id=f"fill-task-{i // 10}",
            audiences=(DEPLOY_AUD,),
            scopes=("deploy:read",),
            iat=now,
            exp=now + 600,
            client_id="acme-app-deploy",
            issuer_id="dev-ci",
            epoch=epoch,
        )
        for i in range(n)
    ]
    RedisGrantStore(db, audit_maxlen=1000).save_many(grants, now=now)


def test_worker_killed_during_fanout_is_recovered(
    kstack: KekStack, dev_issuer: Any, db: redis.Redis
) -> None:
    _fill(db, 60_000)
    before = exchange(kstack, dev_issuer).json()["access_token"]
    body = json.loads(cli(kstack, "revoke-all", "--yes", "--reason", "kill test", "--json").stdout)
    epoch = body["epoch"]
    assert not active(kstack, before)  # the cut holds before any clean-up
    key = K.fanout_progress(epoch)
    deadline = time.time() + 20
    while time.time() < deadline and int(db.hget(key, "batches") or 0) < 2:
        time.sleep(0.005)
    kstack.kill_worker()
    progress = db.hgetall(key)
    killed_mid_way = progress.get("done") != "1"
    kstack.restart_worker()
    deadline = time.time() + 40
    while time.time() < deadline and db.hget(key, "done") != "1":
        time.sleep(0.2)
    assert db.hget(key, "done") == "1", kstack.logs()
    left = [k for k in db.scan_iter("errand:*:grant:*") if int(db.hget(k, "p") or 0) < epoch]
    assert left == []
    assert db.zcount(K.EXPIRY_INDEX, "-inf", "+inf") == sum(
        1 for _ in db.scan_iter("errand:*:grant:*")
    )
    if not killed_mid_way:
        pytest.skip("the fan-out finished before the kill landed; recovery path not exercised")


def test_bulk_revocation_and_signed_records_via_cli(
    kstack: KekStack, dev_issuer: Any, tmp_path: Path
) -> None:
    tokens = [exchange(kstack, dev_issuer).json()["access_token"] for _ in range(3)]
    assert all(active(kstack, t) for t in tokens)
    out = cli(
        kstack, "revoke", "--identity", "acme-app-deploy", "--reason", "leaked runner", "--json"
    )
    body = json.loads(out.stdout)
    assert body["revoked"] >= 3
    assert not any(active(kstack, t) for t in tokens)
    record = tmp_path / "record.jws"
    record.write_text(body["record"])
    ok = cli(kstack, "evidence", "verify", str(record))
    assert "VALID" in ok.stdout and "leaked runner" in ok.stdout
    header, payload, sig = body["record"].split(".")
    tampered = tmp_path / "tampered.jws"
    tampered.write_text(f"{header}.{payload[:-4]}AAAA.{sig}")
    bad = cli(kstack, "evidence", "verify", str(tampered), check=False)
    assert bad.returncode != 0 and "INVALID" in bad.stderr
    listed = cli(kstack, "evidence", "list", "--json").stdout
    assert body["record"] in listed
    # Without a reason a bulk revocation is refused.
    assert cli(kstack, "revoke", "--identity", "acme-app-deploy", check=False).returncode != 0
    # The admin API refuses callers without the admin credential.
    resp = requests.post(kstack.url + "/admin/revoke-all", json={"reason": "x"}, timeout=10)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"


def test_feed_and_emergency_rotation(kstack: KekStack, dev_issuer: Any) -> None:
    token = exchange(kstack, dev_issuer).json()["access_token"]
    old_kid = jwt.get_unverified_header(token)["kid"]
    jwks = requests.get(kstack.url + "/.well-known/jwks.json", timeout=10).json()
    assert old_kid in {k["kid"] for k in jwks["keys"]}
    out = json.loads(cli(kstack, "keys", "rotate", "--emergency").stdout)
    assert out["emergency"] is True and old_kid in out["retired_or_removed"]
    time.sleep(2.5)  # every node re-reads key state within 2 s
    jwks = requests.get(kstack.url + "/.well-known/jwks.json", timeout=10).json()
    assert old_kid not in {k["kid"] for k in jwks["keys"]}
    assert all("d" not in k for k in jwks["keys"])
    assert not active(kstack, token)
    fresh = exchange(kstack, dev_issuer).json()["access_token"]
    assert jwt.get_unverified_header(fresh)["kid"] == out["kid"]
    assert active(kstack, fresh)
    # The revocation feed answers authenticated resource servers only.
    assert requests.get(kstack.url + "/revocations", timeout=10).status_code == 401
    feed = requests.get(
        kstack.url + "/revocations",
        params={"since": "0"},
        auth=(CLIENT_ID, kstack.client_secret),
        timeout=10,
    ).json()
    assert feed["epoch"] >= 1 and isinstance(feed["entries"], list) and feed["cursor"]
