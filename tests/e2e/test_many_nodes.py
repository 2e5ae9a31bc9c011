"""Many nodes, one service: two gunicorn web tiers on different ports (node A with the RQ
worker, node B without one) read one YAML file, one KEK and one admin credential, and share
one Redis. Both name node A's URL as `broker.issuer`; in production that is the load
balancer's URL.

- a token minted by A is introspected, revoked and its task completed through B, and A sees
  each change on its very next request;
- a key rotation through either node reaches the other within 2 s: the new key is in its
  JWKS, and what A signs verifies against B's JWKS;
- a reload of the YAML file is seen by every web process of both nodes within
  `broker.config_reload_seconds`;
- unknown kids sent to both nodes cause at most one JWKS fetch per `refresh_cooldown_seconds`
  in total.

Measured delays are printed (run with `-s` to see them)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import math
import secrets
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
import yaml

from broker.dev.issuer import github_claims
from broker.tokens.keyrecord import new_kek
from tests.support.forms import deploy_form
from tests.support.redis import RedisDbs
from tests.support.servers import FaultIssuer
from tests.support.stack import (
    AUDIENCE,
    CLIENT_ID,
    DEPLOY_AUD,
    GUNICORN_CONF,
    LOCAL,
    ROOT,
    TunedStack,
    errand_cli,
    free_port,
)

pytestmark = pytest.mark.e2e

# The documented bounds (docs/security-model.md, docs/runbook.md: every process re-reads key
# state from Redis every 2 s; docs/configuration.md: each web process checks the YAML file
# every broker.config_reload_seconds; refresh_cooldown_seconds: at most one JWKS fetch per
# issuer per cooldown across all nodes).
KEY_REFRESH_SECONDS = 2.0
RELOAD_SECONDS = 1
COOLDOWN_SECONDS = 1
PUBLISH_LEAD_SECONDS = 3  # ERRAND_KEY_PUBLISH_LEAD_SECONDS, short so the story is quick
SLACK = 0.5  # one request's latency on a loaded machine, on top of a documented bound
LATE_REF = "refs/heads/late"  # matched only by the identity the reload story adds


# Every request on a new connection, so each node's two gunicorn workers both get requests
# (a kept-alive connection stays with one worker).
FRESH = requests.Session()
FRESH.trust_env = False  # 127.0.0.1 only, never through a proxy
FRESH.headers["Connection"] = "close"


def _report(story: str, **seconds: float) -> None:
    parts = ", ".join(f"{k}={v * 1000:.0f} ms" for k, v in seconds.items())
    print(f"\n[many nodes] {story}: {parts}")


class ManyNodes(TunedStack):
    """Node A (gunicorn + RQ worker) with signing keys in Redis sealed with a KEK, and
    add_node(): another gunicorn on another port with the same environment otherwise."""

    def env(self) -> dict[str, str]:
        env = super().env()
        kek = self.workdir / "kek"
        if not kek.exists():
            kek.write_text(new_kek())
            kek.chmod(0o600)
        env.pop("ERRAND_SIGNING_KEY_DIR", None)
        env.update(
            ERRAND_KEY_ENCRYPTION_KEY_FILE=str(kek),
            ERRAND_KEY_PUBLISH_LEAD_SECONDS=str(PUBLISH_LEAD_SECONDS),
        )
        return env

    def add_node(self, name: str, timeout: float = 30.0) -> str:
        """Start one more web tier against the same Redis and files; its URL once ready."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "broker.app:create_app()"],
            env={**self.env(), "ERRAND_BIND": f"127.0.0.1:{port}"},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() reaches its workers through the process group
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(requests.RequestException):
                if LOCAL.get(url + "/readyz", timeout=1).status_code == 200:
                    return url
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready:\n{self.logs()}")

    def logs(self, tail: int = 4000) -> str:
        parts = [super().logs(tail)]
        for name in self.procs:
            path = self.workdir / f"{name}.log"
            if name not in ("web", "worker") and path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-tail:])
        return "\n".join(parts)


@dataclass
class Fleet:
    stack: ManyNodes
    issuer: FaultIssuer
    a: str
    b: str

    def subject(self, *, kid: str | None = None, ref: str | None = None) -> str:
        claims = github_claims(
            issuer=self.issuer.issuer,
            audience=AUDIENCE,
            now=time.time(),
            **({"ref": ref} if ref else {}),
        )
        return self.issuer.mint(claims, **({"kid": kid} if kid else {}))

    def exchange(
        self, node: str, session: requests.Session | None = None, **form: Any
    ) -> requests.Response:
        subject = self.subject(kid=form.pop("kid", None), ref=form.pop("ref", None))
        return (session or FRESH).post(
            node + "/token", data=deploy_form(subject, **form), timeout=10
        )

    def issue(self, node: str, **form: Any) -> str:
        resp = self.exchange(node, **form)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def introspect(self, node: str, token: str) -> dict[str, Any]:
        resp = FRESH.post(
            node + "/introspect",
            data={"token": token},
            auth=(CLIENT_ID, self.stack.client_secret),
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def active(self, node: str, token: str) -> bool:
        return bool(self.introspect(node, token)["active"])

    def admin(self, node: str, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.stack.admin_token}", "X-Errand-Operator": "e2e"}
        return FRESH.request(method, node + path, headers=headers, timeout=30, **kw)

    def jwks(self, node: str) -> dict[str, dict[str, Any]]:
        resp = FRESH.get(node + "/.well-known/jwks.json", timeout=10)
        assert resp.status_code == 200, resp.text
        return {k["kid"]: k for k in resp.json()["keys"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs) -> Iterator[Fleet]:
    url = redis_dbs.url("e2e-many-nodes")
    issuer = FaultIssuer().start()
    stack = ManyNodes(tmp_path_factory.mktemp("many-nodes"), url, issuer.issuer)

    def tune(doc: dict[str, Any]) -> None:
        doc["broker"]["config_reload_seconds"] = RELOAD_SECONDS
        doc["issuers"][0]["refresh_cooldown_seconds"] = COOLDOWN_SECONDS

    stack.edit_config(tune)
    try:
        stack.start()
        yield Fleet(stack, issuer, stack.url, stack.add_node("web-b"))
    finally:
        stack.stop()
        issuer.stop()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(url).flushdb()


def _until(predicate: Callable[[], bool], deadline: float, interval: float = 0.05) -> bool:
    """Poll until `predicate` holds or the monotonic `deadline` passes; True if it held."""
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _wait_past(moment: float) -> None:
    """Until a documented bound (a monotonic time) has passed, to check what must hold after it."""
    time.sleep(max(0.0, moment - time.monotonic()))


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _verify_with(jwks: dict[str, dict[str, Any]], token: str, issuer: str) -> dict[str, Any]:
    key = jwt.PyJWK(jwks[_kid(token)])
    return dict(
        jwt.decode(token, key.key, algorithms=["ES256"], audience=DEPLOY_AUD, issuer=issuer)
    )


# -- 1. grants: minted on A, changed through B, seen by A at once -----------------------------
def test_a_token_from_a_is_revoked_and_completed_through_b(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    task, other_task = "many-" + secrets.token_hex(4), "many-other-" + secrets.token_hex(4)
    first, second, third = (fleet.issue(a, task_id=task) for _ in range(3))
    other = fleet.issue(a, task_id=other_task)

    info = fleet.introspect(b, first)
    assert info["active"] is True
    assert info["iss"] == a  # one issuer, whichever node answers
    assert info["task_id"] == task
    assert all(fleet.active(b, t) for t in (second, third, other))

    # RFC 7009 revocation through B; A's very next requests (either gunicorn worker) agree.
    revoked = FRESH.post(b + "/revoke", data={"token": first}, timeout=10)
    assert revoked.status_code == 200 and revoked.json() == {}
    assert not any(fleet.active(a, first) for _ in range(4))
    assert fleet.active(a, second)

    # The task completed through B: every token of it inactive on A at once, others not.
    done = FRESH.post(
        b + "/tasks/complete", headers={"Authorization": f"Bearer {second}"}, timeout=10
    )
    assert done.status_code == 200, done.text
    assert done.json() == {"task_id": task, "completed": True}
    for _ in range(2):
        assert fleet.introspect(a, second) == {"active": False}
        assert fleet.introspect(a, third) == {"active": False}
        assert fleet.active(a, other)
    late = fleet.exchange(a, task_id=task)
    assert late.status_code == 400, late.text
    assert "complete" in late.json()["error_description"]


# -- 2. keys: rotated through one node, published and used by the other ------------------------
def test_a_rotation_through_one_node_reaches_the_other(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    old = FRESH.get(a + "/readyz", timeout=10).json()["signing_kid"]
    assert FRESH.get(b + "/readyz", timeout=10).json()["signing_kid"] == old

    # Scheduled rotation with the operator CLI against A.
    out = errand_cli(fleet.stack, "keys", "rotate")  # --url is node A
    rotated = time.monotonic()
    assert out.returncode == 0, out.stderr + out.stdout
    body = json.loads(out.stdout)
    new = body["kid"]
    assert body["previous"] == old and not body.get("already_scheduled") and new != old

    # B publishes the new key within 2 s, before anything signs with it; the old key stays.
    assert _until(lambda: new in fleet.jwks(b), rotated + KEY_REFRESH_SECONDS + SLACK), (
        "node B's JWKS does not publish the key rotated through node A"
    )
    published_on_b = time.monotonic() - rotated
    assert old in fleet.jwks(b)
    for node in (a, b):
        token = fleet.issue(node)
        if time.time() < body["activate_at"]:
            assert _kid(token) == old, "a key signed before its activation"

    # From activate_at, within 2 s, both nodes sign with it; B's JWKS verifies A's token.
    signs_by = time.monotonic() + (body["activate_at"] - time.time()) + KEY_REFRESH_SECONDS
    assert _until(lambda: _kid(fleet.issue(a)) == new, signs_by + SLACK, interval=0.1)
    signing_on_a = time.monotonic() - rotated
    _wait_past(signs_by)
    jwks_b = fleet.jwks(b)
    for node in (a, b, a, b):
        token = fleet.issue(node)
        assert _kid(token) == new
        assert _verify_with(jwks_b, token, issuer=a)["sub"] == "acme-app-deploy"
        assert fleet.active(b, token) and fleet.active(a, token)

    # Emergency rotation through B's admin API: A drops the old keys and signs with the new
    # one within 2 s; a token signed by a removed key is inactive on A.
    before = fleet.issue(a)
    resp = fleet.admin(b, "POST", "/admin/keys/rotate", json={"emergency": True})
    emergency_at = time.monotonic()
    assert resp.status_code == 200, resp.text
    urgent = resp.json()["kid"]
    assert _until(
        lambda: set(fleet.jwks(a)) == {urgent}, emergency_at + KEY_REFRESH_SECONDS + SLACK
    ), fleet.jwks(a)
    dropped_on_a = time.monotonic() - emergency_at
    _wait_past(emergency_at + KEY_REFRESH_SECONDS)
    jwks_b = fleet.jwks(b)
    assert set(jwks_b) == {urgent}
    for _ in range(4):
        assert set(fleet.jwks(a)) == {urgent}
        assert not fleet.active(a, before)
        token = fleet.issue(a)
        assert _kid(token) == urgent
        _verify_with(jwks_b, token, issuer=a)
    _report(
        "key rotation",
        scheduled_published_on_b=published_on_b,
        scheduled_signing_on_a=signing_on_a,
        emergency_old_keys_gone_on_a=dropped_on_a,
    )


# -- 3. configuration: one file, reloaded by every web process of both nodes -------------------
def test_a_config_reload_is_seen_by_both_nodes(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    for node in (a, b):
        assert fleet.exchange(node, ref=LATE_REF, scope="deploy:read").status_code == 400
        status = fleet.admin(node, "GET", "/admin/identities/reload").json()
        assert status["ok"] and status["identities"] == 2, status

    doc = yaml.safe_load(fleet.stack.config_file.read_text())
    doc["identities"].append(
        {
            "id": "acme-app-late",
            "type": "service",
            "owner": "platform-team",
            "purpose": "Deploy acme/app from its late branch",
            "match": [
                {
                    "issuer": "dev-ci",
                    "claims": {
                        "repository_id": "100200300",
                        "repository_owner_id": "4242",
                        "ref": LATE_REF,
                    },
                }
            ],
            "allow": {
                "audiences": [DEPLOY_AUD],
                "scopes": ["deploy:read"],
                "default_scopes": ["deploy:read"],
            },
        }
    )
    # Atomically, as the runbook asks: write, then rename.
    tmp = fleet.stack.config_file.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(fleet.stack.config_file)
    written = time.monotonic()
    bound = written + RELOAD_SECONDS

    seen: dict[str, float] = {}

    def both_nodes_issue() -> bool:
        for node in (a, b):
            if (
                node not in seen
                and fleet.exchange(node, ref=LATE_REF, scope="deploy:read").status_code == 200
            ):
                seen[node] = time.monotonic() - written
        return len(seen) == 2

    assert _until(both_nodes_issue, bound + SLACK), f"reloaded within the bound: {seen}"
    _wait_past(bound)
    # Past the bound every web process of both nodes answers with the new file.
    pids: dict[str, set[int]] = {a: set(), b: set()}

    def every_process_reloaded() -> bool:
        for node in (a, b):
            status = fleet.admin(node, "GET", "/admin/identities/reload").json()
            assert status["ok"] and status["identities"] == 3, status
            pids[node].add(status["pid"])
            resp = fleet.exchange(node, ref=LATE_REF, scope="deploy:read")
            assert resp.status_code == 200, resp.text
        return all(len(p) >= 2 for p in pids.values())  # ERRAND_WEB_WORKERS=2 per node

    assert _until(every_process_reloaded, time.monotonic() + 10), pids
    assert not pids[a] & pids[b]
    _report("config reload", first_200_on_a=seen[a], first_200_on_b=seen[b])


# -- 4. the issuer's JWKS: one fetch per cooldown for the whole fleet --------------------------
def test_unknown_kids_on_both_nodes_fetch_once_per_cooldown(fleet: Fleet) -> None:
    issuer = fleet.issuer
    issuer.mode = "ok"
    for node in (fleet.a, fleet.b):  # warm: the keys are in each node's cache or the mirror
        fleet.issue(node)
    baseline = issuer.jwks_requests
    for node in (fleet.a, fleet.b, fleet.a, fleet.b):
        fleet.issue(node)
    assert issuer.jwks_requests == baseline, "a known kid caused a JWKS fetch"
    first = len(issuer.jwks_times)

    def burst(node: str) -> list[tuple[int, str]]:
        out = []
        with requests.Session() as s:
            s.trust_env = False
            s.headers["Connection"] = "close"
            for _ in range(40):
                resp = fleet.exchange(node, s, kid=secrets.token_urlsafe(12))
                out.append((resp.status_code, resp.json().get("error", "")))
                time.sleep(0.05)
        return out

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        nodes = [fleet.a, fleet.b, fleet.a, fleet.b]  # two client threads per node
        answers = [x for batch in pool.map(burst, nodes) for x in batch]
    elapsed = time.monotonic() - start
    times = issuer.jwks_times[first:]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    allowed = math.ceil(elapsed / COOLDOWN_SECONDS) + 1

    assert {status for status, _ in answers} == {400}, answers
    assert {error for _, error in answers} == {"invalid_request"}, answers
    assert len(times) <= allowed, (len(times), elapsed)
    # The cooldown starts when a node takes the fetch lock; the issuer stamps the request when
    # it arrives, which a loaded machine can delay for the first fetch and not the next.
    assert all(g >= COOLDOWN_SECONDS * 0.75 for g in gaps), gaps
    print(
        f"\n[many nodes] {len(answers)} unknown kids over {elapsed:.2f} s on 2 nodes: "
        f"{len(times)} JWKS fetches (bound {allowed}), gaps {[round(g, 2) for g in gaps]}"
    )
