"""Suite 4: storage and worker faults with real processes (gunicorn with 2 workers, the RQ
worker, and a private redis-server per test: never the one on 6379).

Redis killed and restarted during concurrent exchange/introspection load. The invariants,
precisely:

  R1  No 200 exchange without its grant written at that moment. Run with a durable Redis
      (appendonly, appendfsync always: every acknowledged write survives SIGKILL), every
      jti from a 200 has its grant and its "issued" audit event in Redis after recovery.
      With a volatile Redis (the default: nothing survives a restart), every issued token
      is afterwards active exactly when its grant exists, so a token whose grant Redis lost
      is inactive, and every token issued after the restart has its grant.
  R2  Introspection never says active:true while Redis is down: every request sent after
      the kill and answered before the restart is a 503 temporarily_unavailable with
      Retry-After (exchanges too: no access_token).
  R3  Recovery without a restart: the same gunicorn and worker processes serve 200s again
      within seconds of Redis coming back; no request ever gets a 500.

Worker killed mid-job: SIGKILL while it is revoking the grants of a completed task; a new
worker (the reconciler re-enqueues stale completions) finishes the job; every grant of the
task is gone, each revoked exactly once; every grant key always carries a TTL.

Queue backed up: with no worker at all, short-lived tokens still die on time (introspection
inactive, grant keys gone by Redis TTL) and a completed task's tokens are dead at once; the
clean-up jobs wait in the queue and drain when a worker returns."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import requests

from broker.dev.embedded_redis import RedisProcess
from broker.dev.issuer import github_claims
from broker.domain.audit_hmac import jti_hmac
from broker.store import keys
from tests.support.audit import use_broker_audit_key
from tests.support.clocks import wait_until
from tests.support.forms import deploy_form
from tests.support.hostile import observe
from tests.support.jws import unverified_claims
from tests.support.redis import DurableRedis
from tests.support.servers import FaultIssuer
from tests.support.stack import AUDIENCE, CLIENT_ID, EXPIRY_REF, TunedStack, warm_up

pytestmark = pytest.mark.e2e


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def _token(issuer: FaultIssuer, **claims: Any) -> str:
    c = github_claims(issuer=issuer.issuer, audience=AUDIENCE, now=time.time())
    c.update(claims)
    return issuer.mint(c)


def _introspect(stack: TunedStack, token: str, http: requests.Session) -> requests.Response:
    return http.post(
        stack.url + "/introspect",
        data={"token": token},
        auth=(CLIENT_ID, stack.client_secret),
        timeout=10,
    )


@dataclass
class Call:
    kind: str  # exchange | introspect
    sent: float
    answered: float
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    token: str = ""  # the access token issued (exchange) or introspected


@dataclass
class Timeline:
    killed: float = 0.0  # after the SIGKILL returned
    restarting: float = 0.0  # before the new redis-server was started
    restarted: float = 0.0  # after it answered PING


def _load(
    stack: TunedStack,
    issuer: FaultIssuer,
    stop: threading.Event,
    calls: list[Call],
    issued: list[str],
    lock: threading.Lock,
    seed: int,
) -> None:
    rng = random.Random(seed)
    http = _session()
    for _ in range(3000):  # bounded in count as well as by the stop event
        if stop.is_set():
            return
        sent = time.monotonic()
        status, body = _send(
            lambda: http.post(stack.url + "/token", data=deploy_form(_token(issuer)), timeout=10)
        )
        call = Call("exchange", sent, time.monotonic(), status, body, body.get("access_token", ""))
        with lock:
            calls.append(call)
            if call.token:
                issued.append(call.token)
            target = rng.choice(issued) if issued else None
        if target is None:
            continue
        sent = time.monotonic()
        status, body = _send(lambda t=target: _introspect(stack, t, http))
        with lock:
            calls.append(Call("introspect", sent, time.monotonic(), status, body, target))


def _send(request: Any) -> tuple[int, dict[str, Any]]:
    """(status, JSON body); a dropped connection is status 0, a non-JSON body is kept raw."""
    try:
        resp = request()
    except requests.RequestException as err:
        return 0, {"_error": repr(err)}
    try:
        body = resp.json()
    except ValueError:
        body = {"_raw": resp.text[:200]}
    return resp.status_code, body if isinstance(body, dict) else {"_raw": body}


def _run_outage(
    stack: TunedStack, issuer: FaultIssuer, server: RedisProcess
) -> tuple[list[Call], Timeline]:
    calls: list[Call] = []
    issued: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    timeline = Timeline()
    threads = [
        threading.Thread(target=_load, args=(stack, issuer, stop, calls, issued, lock, n))
        for n in range(4)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        server.kill()
        timeline.killed = time.monotonic()
        time.sleep(1.5)
        timeline.restarting = time.monotonic()
        server.start()
        timeline.restarted = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return calls, timeline


def _outage_stack(
    tmp_path_factory: pytest.TempPathFactory, server: RedisProcess, issuer: FaultIssuer
) -> TunedStack:
    stack = TunedStack(tmp_path_factory.mktemp("outage-stack"), server.url, issuer.issuer)
    stack.start()
    warm_up(stack, issuer)
    return stack


@pytest.mark.parametrize("durable", [True, False], ids=["durable-redis", "volatile-redis"])
def test_redis_killed_and_restarted_under_load(
    tmp_path_factory: pytest.TempPathFactory, durable: bool
) -> None:
    data = tmp_path_factory.mktemp("outage-redis")
    server: RedisProcess = (DurableRedis(data) if durable else RedisProcess(data)).start()
    issuer = FaultIssuer().start()
    stack = _outage_stack(tmp_path_factory, server, issuer)
    pids = {name: proc.pid for name, proc in stack.procs.items()}
    try:
        calls, tl = _run_outage(stack, issuer, server)
        db = redis.Redis.from_url(server.url, decode_responses=True)
        http = _session()
        exchanges = [c for c in calls if c.kind == "exchange"]
        introspections = [c for c in calls if c.kind == "introspect"]

        # R3: no 500, no other status; 503s are the documented retryable error.
        for c in calls:
            assert c.status in (200, 503), (c.kind, c.status, c.body)
            if c.status == 503:
                assert c.body.get("error") == "temporarily_unavailable", c.body
                assert "access_token" not in c.body and "active" not in c.body
        # R2: fully inside the outage, everything is a 503 (never active:true, never a token).
        inside = [c for c in calls if c.sent > tl.killed and c.answered < tl.restarting]
        assert inside, "no request ran during the outage"
        assert {c.status for c in inside} == {503}, [
            (c.kind, c.status, c.body) for c in inside if c.status != 503
        ][:5]
        # An answer during the outage is quick (short Redis timeouts), not a hung worker.
        assert max(c.answered - c.sent for c in inside) < 3.0

        ok = [c for c in exchanges if c.status == 200]
        jtis = {unverified_claims(c.token)["jti"]: c for c in ok}
        use_broker_audit_key(stack.env(), db)  # events carry jti HMACs, not jtis
        issued_events = {
            e.get("jti_hmac")
            for _id, f in db.xrange(keys.AUDIT_STREAM)
            if (e := json.loads(f["e"])).get("event") == "token.exchange"
            and e.get("outcome") == "issued"
        }
        lost: list[str] = []
        for jti, call in jtis.items():
            exists = bool(db.exists(keys.grant(jti)))
            if durable:
                # R1 (durable): acknowledged before the 200, so it survived the SIGKILL.
                assert exists, f"a 200 exchange at {call.answered - tl.killed:+.2f}s has no grant"
                assert jti_hmac(jti) in issued_events, "a 200 exchange has no audit trail"
            elif call.sent > tl.restarted:
                assert exists, "a token issued after the restart has no grant"
            if not exists:
                lost.append(jti)
        # R1 (both): a token is active exactly when its grant exists (every lost grant, and a
        # sample of the others, asked through introspection).
        kept = [j for j in jtis if j not in lost]
        sample = lost + random.Random(7).sample(kept, min(120, len(kept)))
        for jti in sample:
            resp = _introspect(stack, jtis[jti].token, http)
            assert resp.status_code == 200
            assert resp.json()["active"] is (jti not in lost), jti
        # Every active:true answered during the run was for a token a 200 issued (and, with a
        # durable Redis, whose grant is still there).
        for c in introspections:
            if c.status == 200 and c.body.get("active"):
                jti = unverified_claims(c.token)["jti"]
                assert jti in jtis
                assert not durable or jti not in lost

        # R3: same processes, serving again: every exchange sent 1.5 s after the restart is 200.
        late = [c for c in exchanges if c.sent > tl.restarted + 1.5]
        assert late and {c.status for c in late} == {200}, {c.status for c in late}
        assert {n: p.pid for n, p in stack.procs.items()} == pids
        assert stack.alive("web") and stack.alive("worker")
        first_ok_after = min((c.answered for c in ok if c.sent > tl.restarting), default=None)
        outage = tl.restarting - tl.killed
        observe(
            fault=f"redis SIGKILL under load ({'durable' if durable else 'volatile'})",
            requests=len(calls),
            exchanges_200=len(ok),
            exchanges_503=sum(1 for c in exchanges if c.status == 503),
            introspections=len(introspections),
            introspections_active_during_outage=sum(
                1 for c in inside if c.kind == "introspect" and c.body.get("active")
            ),
            grants_lost_with_redis=len(lost),
            outage_seconds=round(outage, 2),
            first_200_after_restart_began=(
                round(first_ok_after - tl.restarting, 2) if first_ok_after else None
            ),
            max_outage_latency=round(max(c.answered - c.sent for c in inside), 3),
        )
        db.close()
    finally:
        stack.stop()
        issuer.stop()
        server.stop()


# -- worker faults ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = RedisProcess(tmp_path_factory.mktemp("worker-redis")).start()
    issuer = FaultIssuer().start()
    stack = TunedStack(
        tmp_path_factory.mktemp("worker-stack"),
        server.url,
        issuer.issuer,
        extra_env={"ERRAND_RECONCILE_AFTER_SECONDS": "2", "ERRAND_SWEEP_INTERVAL_SECONDS": "1"},
    ).start()
    warm_up(stack, issuer)
    db = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield {"stack": stack, "issuer": issuer, "db": db, "server": server}
    finally:
        db.close()
        stack.stop()
        issuer.stop()
        server.stop()


def _issue_many(stack: TunedStack, issuer: FaultIssuer, n: int, **form: Any) -> list[str]:
    import concurrent.futures

    claims = form.pop("_claims", {})

    def batch(count: int) -> list[str]:
        out = []
        with _session() as http:
            for _ in range(count):
                resp = http.post(
                    stack.url + "/token",
                    data=deploy_form(_token(issuer, **claims), **form),
                    timeout=10,
                )
                assert resp.status_code == 200, resp.text
                out.append(resp.json()["access_token"])
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [t for b in pool.map(batch, [n // 4] * 4) for t in b]


def _grant_ttls_bounded(db: redis.Redis, max_ttl: int) -> None:
    for key in db.scan_iter(keys.PREFIX + "grant:*", count=1000):
        ttl = db.ttl(key)
        assert ttl != -1, f"{key} has no TTL"
        assert ttl <= max_ttl, f"{key} outlives the longest allowed token ({ttl}s)"


def test_worker_killed_mid_cleanup_job(worker_env: dict[str, Any]) -> None:
    stack, issuer, db = worker_env["stack"], worker_env["issuer"], worker_env["db"]
    task = "bulk-" + secrets.token_hex(4)
    tokens = _issue_many(stack, issuer, 400, task_id=task)
    jtis = [unverified_claims(t)["jti"] for t in tokens]
    assert db.zcard(keys.task_index(task)) == 400
    _grant_ttls_bounded(db, 600)

    stack.kill_worker()  # so the job waits, and we choose when it starts
    http = _session()
    done = http.post(
        stack.url + "/tasks/complete", headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=10
    )
    assert done.status_code == 200, done.text
    # Revocation does not wait for the worker: the tombstone makes every token dead now.
    for token in random.sample(tokens, 20):
        assert _introspect(stack, token, http).json() == {"active": False}

    stack.restart_worker()
    started = wait_until(lambda: db.zcard(keys.task_index(task)) < 400, timeout=20, interval=0.001)
    assert started, "the clean-up job never started:\n" + stack.logs()
    db.client_pause(5000, all=False)  # writes stall: the job is certainly mid-way
    try:
        remaining = db.zcard(keys.task_index(task))
        stack.kill_worker()
    finally:
        db.client_unpause()
    assert 0 < remaining < 400, remaining
    _grant_ttls_bounded(db, 600)

    stack.restart_worker()  # a fresh worker; the reconciler re-enqueues the stale completion
    cleaned = wait_until(lambda: db.zcard(keys.task_index(task)) == 0, timeout=30, interval=0.2)
    assert cleaned, f"{db.zcard(keys.task_index(task))} grants left:\n" + stack.logs()
    assert not any(db.exists(keys.grant(j)) for j in jtis)
    use_broker_audit_key(stack.env(), db)  # events carry jti HMACs, not jtis
    revoked = [
        e.get("jti_hmac")
        for _id, f in db.xrange(keys.AUDIT_STREAM)
        if (e := json.loads(f["e"])).get("event") == "grant.revoked" and e.get("task") == task
    ]
    assert sorted(revoked) == sorted(jti_hmac(j) for j in jtis), "each grant revoked exactly once"
    assert db.zscore(keys.COMPLETING, task) is None
    observe(
        fault="worker SIGKILL mid clean-up",
        grants=400,
        remaining_at_kill=remaining,
        revoked_events=len(revoked),
        cleaned=True,
    )


def test_queue_backed_up_expiry_and_revocation_still_hold(worker_env: dict[str, Any]) -> None:
    stack, issuer, db = worker_env["stack"], worker_env["issuer"], worker_env["db"]
    if stack.alive("worker"):
        stack.kill_worker()
    http = _session()
    lifetime = 2
    short = _issue_many(
        stack,
        issuer,
        40,
        _claims={"ref": EXPIRY_REF},
        scope="deploy:read",
        requested_lifetime=str(lifetime),
    )
    short_jtis = [unverified_claims(t)["jti"] for t in short]
    exp = max(unverified_claims(t)["exp"] for t in short)
    # Clean-ups pile up: ten completed tasks, no worker.
    completed = []
    for n in range(10):
        task = f"backlog-{n}-{secrets.token_hex(3)}"
        token = http.post(
            stack.url + "/token", data=deploy_form(_token(issuer), task_id=task), timeout=10
        ).json()["access_token"]
        assert (
            http.post(
                stack.url + "/tasks/complete",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).status_code
            == 200
        )
        assert _introspect(stack, token, http).json() == {"active": False}  # dead at once
        completed.append(task)
    queued = db.llen("rq:queue:errand")
    assert queued >= 10, queued

    time.sleep(max(0.0, exp + 1.2 - time.time()))
    for token in short:
        assert _introspect(stack, token, http).json() == {"active": False}
    assert not any(db.exists(keys.grant(j)) for j in short_jtis), "a grant outlived its TTL"
    stale_index = db.zcount(keys.EXPIRY_INDEX, "-inf", int(time.time()))
    assert stale_index >= len(short_jtis), "the index is only cleaned by the worker's sweep"
    assert db.llen("rq:queue:errand") >= 10

    stack.restart_worker()
    drained = wait_until(lambda: db.llen("rq:queue:errand") == 0, timeout=20, interval=0.2)
    assert drained, stack.logs()
    swept = wait_until(
        lambda: (
            db.zcount(keys.EXPIRY_INDEX, "-inf", int(time.time()) - 1) == 0
            and all(db.zcard(keys.task_index(t)) == 0 for t in completed)
        ),
        timeout=20,
        interval=0.2,
    )
    assert swept, stack.logs()
    observe(
        fault="queue backed up (no worker)",
        short_tokens=40,
        lifetime=lifetime,
        queued_jobs=queued,
        grants_left_after_expiry=0,
        stale_index_entries_before_worker=stale_index,
        drained=True,
    )
