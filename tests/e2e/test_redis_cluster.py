"""The broker on a real Redis Cluster: three primaries with a replica each, on loopback
ports (tests/support/redis_cluster.py), the job queues on a plain Redis
(ERRAND_QUEUE_REDIS_URL). One gunicorn + worker stack for the module.

The stories of the single-Redis suite, on a cluster: exchange, introspect, revoke, complete,
revoke by owner, revoke-all with its clean-up, the expiry sweep; then a primary failover and
a slot migration during an exchange/introspection load: no token without its stored grant,
no revoked or completed token active afterwards, and the load recovers."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import requests
from redis.cluster import RedisCluster

from broker.domain.grant_ids import task_bucket
from broker.store import keys as K
from tests.support.delegation import ACTORS, actor_ref, add_actors, hop_form
from tests.support.redis import RedisDbs
from tests.support.redis_cluster import RedisClusterProcesses
from tests.support.stack import (
    EXPIRY_REF,
    TunedStack,
    introspect,
    issue,
    mint,
    post_token,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield processes.start()
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def cstack(
    tmp_path_factory: pytest.TempPathFactory,
    cluster: RedisClusterProcesses,
    redis_dbs: RedisDbs,
    dev_issuer: Any,
) -> Iterator[TunedStack]:
    stack = TunedStack(
        tmp_path_factory.mktemp("cluster-stack"),
        cluster.url,
        dev_issuer.issuer,
        extra_env={"ERRAND_QUEUE_REDIS_URL": redis_dbs.url("cluster-queue")},
    )
    # The delegation story's actors (test_a_delegation_chain_and_a_task_suspension_...).
    stack.edit_config(lambda doc: add_actors(doc, "dev-ci", "acme-app-deploy"))
    stack.start(timeout=60)
    try:
        yield stack
    finally:
        stack.stop()
        redis_dbs.flush("cluster-queue")


@pytest.fixture(scope="module")
def peek(cluster: RedisClusterProcesses) -> Iterator[RedisCluster]:
    client = cluster.client()
    yield client
    client.close()


def admin(stack: TunedStack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(
        stack.url + path,
        json=body,
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def active(stack: TunedStack, token: str) -> bool:
    resp = introspect(stack, token)
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def complete(stack: TunedStack, token: str) -> requests.Response:
    return requests.post(
        stack.url + "/tasks/complete", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def post_hop(stack: TunedStack, dev_issuer: Any, subject: str, actor: str) -> requests.Response:
    actor_token = mint(dev_issuer, **actor_ref(actor))
    return requests.post(
        stack.url + "/token",
        data=hop_form(subject, actor_token, scope="deploy:read"),
        timeout=10,
    )


def primary_of(peek: RedisCluster, key: str) -> int:
    return int(peek.get_node_from_key(key).port)


def test_exchange_introspect_revoke_complete(cstack, dev_issuer, peek):
    task = "cl-" + secrets.token_hex(4)
    a = issue(cstack, dev_issuer, task_id=task)["access_token"]
    b = issue(cstack, dev_issuer, task_id=task, scope="deploy:read")["access_token"]
    jti = jti_of(a)
    assert jti.startswith(task_bucket(task) + "_")  # the jti names its task's bucket
    # The grant, its task's index, tombstone and owner share a slot; the identity's index
    # and the global group are elsewhere.
    slot = peek.keyslot(K.grant(jti))
    assert {peek.keyslot(K.task_index(task)), peek.keyslot(K.task_owner(task))} == {slot}
    assert peek.keyslot(K.task_tombstone(task)) == slot
    assert peek.exists(K.grant(jti)) and peek.get(K.task_owner(task)) == "acme-app-deploy"
    assert peek.zscore(K.identity_index("acme-app-deploy"), jti) is not None
    assert active(cstack, a) and active(cstack, b)

    assert requests.post(cstack.url + "/revoke", data={"token": a}, timeout=10).status_code == 200
    assert not active(cstack, a) and active(cstack, b)
    assert not peek.exists(K.grant(jti))
    assert peek.zscore(K.identity_index("acme-app-deploy"), jti) is None
    feed = [f["v"] for _, f in peek.xrange(K.REVOCATION_FEED, "-", "+")]
    assert jti in feed

    assert complete(cstack, b).status_code == 200
    assert not active(cstack, b)
    refused = post_token(cstack, mint(dev_issuer), task_id=task)
    assert refused.status_code == 400, refused.text
    assert task in [f["v"] for _, f in peek.xrange(K.REVOCATION_FEED, "-", "+")]


def test_revoke_by_owner_then_revoke_all_cleans_every_node(cstack, dev_issuer, peek):
    tasks = [f"own-{secrets.token_hex(3)}-{i}" for i in range(12)]
    tokens = [issue(cstack, dev_issuer, task_id=t)["access_token"] for t in tasks]
    assert len({primary_of(peek, K.grant(jti_of(t))) for t in tokens}) == 3  # every primary
    result = admin(
        cstack, "/admin/revoke", {"kind": "owner", "value": "platform-team", "reason": "e2e"}
    )
    assert result["revoked"] >= len(tokens)
    assert not any(active(cstack, t) for t in tokens)

    after = [issue(cstack, dev_issuer, task_id=t + "-b")["access_token"] for t in tasks]
    assert all(active(cstack, t) for t in after)
    epoch = admin(cstack, "/admin/revoke-all", {"reason": "e2e cluster"})["epoch"]
    assert not any(active(cstack, t) for t in after)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and peek.hget(K.fanout_progress(epoch), "done") != "1":
        time.sleep(0.2)
    assert peek.hget(K.fanout_progress(epoch), "done") == "1"
    assert not any(peek.exists(K.grant(jti_of(t))) for t in after)
    fresh = issue(cstack, dev_issuer, task_id="after-cut-" + secrets.token_hex(3))["access_token"]
    assert active(cstack, fresh)


def test_short_grants_are_swept_on_every_node(cstack, dev_issuer, peek):
    tasks = [f"sweep-{secrets.token_hex(3)}-{i}" for i in range(6)]
    jtis = []
    for task in tasks:
        resp = post_token(
            cstack,
            mint(dev_issuer, ref=EXPIRY_REF),
            scope="deploy:read",
            requested_lifetime="2",
            task_id=task,
        )
        assert resp.status_code == 200, resp.text
        jtis.append(jti_of(resp.json()["access_token"]))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = sum(1 for m in peek.zrange(K.EXPIRY_INDEX, 0, -1) if m.split(" ")[0] in jtis)
        if left == 0 and not any(peek.exists(K.task_index(t)) for t in tasks):
            break
        time.sleep(0.25)
    assert left == 0
    assert not any(peek.exists(K.task_index(t)) for t in tasks)
    assert not any(peek.exists(K.grant(j)) for j in jtis)


def test_a_delegation_chain_and_a_task_suspension_on_a_cluster(cstack, dev_issuer, peek):
    """Hops are minted in the root task's bucket (their write checks every link in one
    slot); revoking the middle hop revokes the one below it; a suspended task refuses new
    grants and hops and its tokens are inactive until it resumes."""
    task = "cl-chain-" + secrets.token_hex(4)
    root = issue(cstack, dev_issuer, task_id=task, scope="deploy:read deploy:write")
    tokens, token = [], root["access_token"]
    for actor in ACTORS[:3]:
        resp = post_hop(cstack, dev_issuer, token, actor)
        assert resp.status_code == 200, resp.text
        token = resp.json()["access_token"]
        tokens.append(token)
    jtis = [jti_of(t) for t in (root["access_token"], *tokens)]
    slot = peek.keyslot(K.task_index(task))
    assert {peek.keyslot(K.grant(j)) for j in jtis} == {slot}
    assert {peek.keyslot(K.children_index(j)) for j in jtis} == {slot}
    assert peek.zscore(K.children_index(jtis[1]), jtis[2]) is not None

    assert requests.post(cstack.url + "/revoke", data={"token": tokens[1]}, timeout=10).ok
    assert active(cstack, root["access_token"]) and active(cstack, tokens[0])
    assert not active(cstack, tokens[1]) and not active(cstack, tokens[2])
    feed = {f["v"]: f.get("p") for _, f in peek.xrange(K.REVOCATION_FEED, "-", "+")}
    assert feed[jtis[3]] == jtis[2] and not peek.exists(K.grant(jtis[3]))

    bearer = {"Authorization": f"Bearer {root['access_token']}"}
    moved = requests.post(f"{cstack.url}/tasks/{task}/suspend", headers=bearer, timeout=10)
    assert moved.status_code == 200 and moved.json()["state"] == "suspended", moved.text
    assert not active(cstack, root["access_token"]) and not active(cstack, tokens[0])
    refused = post_token(cstack, mint(dev_issuer), task_id=task)
    assert refused.status_code == 400 and "suspended" in refused.json()["error_description"]
    assert post_hop(cstack, dev_issuer, tokens[0], ACTORS[1]).status_code == 400
    kinds = [f["k"] for _, f in peek.xrange(K.REVOCATION_FEED, "-", "+") if f["v"] == task]
    assert kinds[-1] == "task_suspended"

    moved = requests.post(f"{cstack.url}/tasks/{task}/resume", headers=bearer, timeout=10)
    assert moved.status_code == 200 and moved.json()["state"] == "running", moved.text
    assert active(cstack, root["access_token"]) and active(cstack, tokens[0])
    again = post_hop(cstack, dev_issuer, tokens[0], ACTORS[1])
    assert again.status_code == 200, again.text
    assert jti_of(again.json()["access_token"]).startswith(task_bucket(task) + "_")
    assert peek.zscore(K.TASKS_OPEN, task) is not None  # the open-tasks gauge, on {g}


# -- topology changes under load -----------------------------------------------------------


class Load:
    """Threads that exchange and introspect in a loop; every 200 is kept with its token."""

    def __init__(self, stack: TunedStack, dev_issuer: Any, tasks: list[str]) -> None:
        self.stack, self.dev_issuer, self.tasks = stack, dev_issuer, tasks
        self.issued: list[tuple[str, str]] = []  # (task, token)
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self, worker: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            i = 0
            while not self.stop.is_set():
                task = self.tasks[(worker + i) % len(self.tasks)]
                i += 1
                try:
                    resp = post_token(self.stack, mint(self.dev_issuer), session, task_id=task)
                    if resp.status_code == 200:
                        token = resp.json()["access_token"]
                        with self.lock:
                            self.issued.append((task, token))
                        introspect(self.stack, token, session)
                    else:
                        assert resp.status_code == 503, resp.text  # never a 500
                        assert resp.headers.get("Retry-After")
                        with self.lock:
                            self.errors += 1
                except requests.RequestException:
                    with self.lock:
                        self.errors += 1


def migrate_slot(cluster: RedisClusterProcesses, slot: int) -> None:
    """Move one slot to another primary by hand, as `redis-cli --cluster reshard` does:
    IMPORTING/MIGRATING, MIGRATE the keys in batches, then SETSLOT NODE everywhere."""
    owner = cluster.primary_port(slot)
    target = next(p for p in cluster.primary_ports() if p != owner)
    src, dst = cluster.node(owner), cluster.node(target)
    src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while True:
        batch = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 20)
        if not batch:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", *batch)
        time.sleep(0.02)  # let requests land while the slot is half moved (ASK)
    for port in cluster.primary_ports():
        cluster.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    src.close()
    dst.close()


def fail_over(cluster: RedisClusterProcesses, slot: int) -> int:
    """CLUSTER FAILOVER on a replica of the primary serving `slot`; returns the new port."""
    primary = cluster.primary_port(slot)
    for port in cluster.ports:
        node = cluster.node(port)
        try:
            role = node.execute_command("ROLE")
            if role[0] == "slave" and int(role[2]) == primary:
                node.execute_command("CLUSTER", "FAILOVER")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and node.execute_command("ROLE")[0] != "master":
                    time.sleep(0.05)
                assert node.execute_command("ROLE")[0] == "master"
                return port
        finally:
            node.close()
    raise AssertionError(f"no replica of the primary on port {primary}")


def test_failover_and_slot_migration_under_load(cstack, dev_issuer, cluster, peek):
    tasks = [f"load-{secrets.token_hex(3)}-{i}" for i in range(4)]
    load = Load(cstack, dev_issuer, tasks)
    threads = [threading.Thread(target=load.run, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)  # load running (real time: the cluster's own)
        fail_over(cluster, peek.keyslot(K.task_index(tasks[0])))
        cluster.wait_ok()
        time.sleep(0.5)
        migrate_slot(cluster, peek.keyslot(K.task_index(tasks[1])))
        cluster.wait_ok()
        time.sleep(0.5)
    finally:
        load.stop.set()
        for t in threads:
            t.join(15)
    assert len(load.issued) > 20, (len(load.issued), load.errors)

    # No token without its stored grant, on whichever node now serves it.
    fresh = RedisClusterProcesses.client(cluster)
    try:
        missing = [tok for _, tok in load.issued if not fresh.exists(K.grant(jti_of(tok)))]
        assert missing == []
        assert all(active(cstack, tok) for _, tok in load.issued[-10:])
        # Revoked and completed tokens are inactive afterwards.
        revoked = [tok for task, tok in load.issued if task == tasks[2]][:5]
        for tok in revoked:
            assert requests.post(cstack.url + "/revoke", data={"token": tok}, timeout=10).ok
        done = [tok for task, tok in load.issued if task == tasks[1]]
        assert complete(cstack, done[-1]).status_code == 200
        assert not any(active(cstack, tok) for tok in revoked + done[:10])
        assert not any(fresh.exists(K.grant(jti_of(tok))) for tok in revoked)
    finally:
        fresh.close()

    # The load recovers: sequential exchanges all succeed.
    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(
            pool.map(
                lambda i: post_token(cstack, mint(dev_issuer), task_id=tasks[0]).status_code,
                range(20),
            )
        )
    assert codes == [200] * 20
