"""Redis behind Sentinel: the broker and the workers follow a failover without a restart, and
no token the broker handed out loses its grant, no revocation or completion it confirmed
comes undone.

A real primary, two replicas and three Sentinels, all with passwords, on free loopback
ports. Two replicas, not one: grant writes WAIT for one replica (fail closed), and after a
failover with a single replica the new primary has none to acknowledge until the old one
rejoins (Sentinel converts a demoted primary only after several seconds; a killed one
never), so exchanges would stay refused. A load of exchanges, introspections, revocations
and task completions runs through the Flask test client while the primary is first handed
over (SENTINEL FAILOVER, writes paused on the old primary first, as the planned procedure
says) and then killed (SIGKILL). Every wait polls; the whole module takes about 45 s."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from rq.job import Job

from broker.dev.embedded_redis import find_redis_server, free_port
from broker.domain.introspection import introspect
from broker.domain.token_revocation import revoke_token
from broker.errors import TemporarilyUnavailable
from broker.jobs import task_job_id
from broker.services import build_services
from broker.settings import SettingsError, load_settings
from broker.store import connection, keys
from broker.store.connection import RedisLocation, connect
from tests.support.builders import (
    CLIENT_ID,
    CLIENT_SECRET,
    StaticFetcher,
    config_dict,
    gha_token,
    make_app,
    make_config,
)
from tests.support.domain import exchange, run_jobs
from tests.support.forms import deploy_form

pytestmark = pytest.mark.integration

ISSUER = "https://ci.example"
SERVICE = "svc"
REDIS_PASSWORD = "redis-password-for-tests-0123"
SENTINEL_PASSWORD = "sentinel-password-for-tests-0123"
RECOVERY_SECONDS = 8.0  # from the start of a failover to a steady load again
PHASE_SECONDS = 20.0  # bound on any one wait below


def _until(what: str, check: Callable[[], Any], timeout: float = PHASE_SECONDS) -> Any:
    """Poll check() until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except redis.RedisError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- the Redis deployment -----------------------------------------------------------------------
@dataclass
class _Server:
    port: int
    proc: subprocess.Popen[bytes]
    password: str

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
            socket_timeout=1, socket_connect_timeout=1,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class _Deployment:
    """A primary, its replicas and three Sentinels monitoring them as SERVICE."""

    data: Path
    nodes: list[_Server] = field(default_factory=list)
    sentinels: list[_Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)

    def start(self, replicas: int = 2) -> _Deployment:
        primary = self.add_node("n0")
        for i in range(1, replicas + 1):
            self.add_node(f"n{i}", "--replicaof", "127.0.0.1", str(primary.port))
        for replica in self.nodes[1:]:
            _until("replication", lambda r=replica: _link_up(r.client()))
        for i in range(3):
            self._sentinel(f"s{i}", primary.port)
        for s in self.sentinels:
            _until("Sentinels that know each other and the replicas", lambda s=s: self._ready(s))
        return self

    def stop(self) -> None:
        for server in self.sentinels + self.nodes:
            if server.alive():
                server.proc.kill()
                server.proc.wait(5)

    def _spawn(self, name: str, args: list[str], password: str) -> _Server:
        binary = find_redis_server()
        if not binary:
            pytest.skip("no redis-server")
        port = free_port()
        workdir = self.data / name
        workdir.mkdir(parents=True)
        with open(workdir / "log", "ab") as log:
            proc = subprocess.Popen(
                [binary, *args, "--port", str(port), "--dir", str(workdir)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = _Server(port, proc, password)
        _until(f"{name} to answer", lambda: server.client().ping())
        return server

    def add_node(self, name: str, *extra: str) -> _Server:
        conf = self.data / f"{name}.conf"
        conf.write_text(
            'bind 127.0.0.1\nsave ""\nappendonly no\nmaxmemory-policy noeviction\n'
            f"requirepass {REDIS_PASSWORD}\nmasterauth {REDIS_PASSWORD}\n"
        )
        node = self._spawn(name, [str(conf), *extra], REDIS_PASSWORD)
        self.nodes.append(node)
        return node

    def _sentinel(self, name: str, primary_port: int) -> None:
        conf = self.data / f"{name}.conf"  # Sentinel rewrites its file: one each, writable
        conf.write_text(
            "bind 127.0.0.1\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel auth-pass {SERVICE} {REDIS_PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        self.sentinels.append(self._spawn(name, [str(conf), "--sentinel"], SENTINEL_PASSWORD))

    def _ready(self, sentinel: _Server) -> bool:
        state = sentinel.client().sentinel_master(SERVICE)
        return bool(
            state["is_master"]
            and not state["is_sdown"]
            and int(state["num-slaves"]) == len(self.nodes) - 1
            and int(state["num-other-sentinels"]) == 2
        )

    def primary_port(self) -> int:
        """The primary all three Sentinels name (raises while they disagree)."""
        ports = {
            int(s.client().sentinel_get_master_addr_by_name(SERVICE)[1]) for s in self.sentinels
        }
        assert len(ports) == 1, ports
        return ports.pop()

    def node(self, port: int) -> _Server:
        return next(n for n in self.nodes if n.port == port)

    def named_primary_other_than(self, old: int) -> _Server | None:
        try:
            port = self.primary_port()
        except AssertionError:
            return None
        return self.node(port) if port != old else None


def _link_up(client: redis.Redis) -> bool:
    info = client.info("replication")
    return info["role"] == "slave" and info["master_link_status"] == "up"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[_Deployment]:
    d = _Deployment(tmp_path / "redis")
    try:
        yield d.start()
    finally:
        d.stop()


def _environment(d: _Deployment, tmp_path: Path, key_dir: Path) -> dict[str, str]:
    (tmp_path / "redis-password").write_text(REDIS_PASSWORD + "\n")
    (tmp_path / "sentinel-password").write_text(SENTINEL_PASSWORD + "\n")
    config = tmp_path / "errand.yaml"
    config.write_text(yaml.safe_dump(config_dict(ISSUER)))
    return {
        "ERRAND_CONFIG": str(config),
        "ERRAND_SIGNING_KEY_DIR": str(key_dir),
        "ERRAND_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in d.sentinels),
        "ERRAND_REDIS_SENTINEL_SERVICE": SERVICE,
        "ERRAND_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
        "ERRAND_REDIS_SENTINEL_PASSWORD_FILE": str(tmp_path / "sentinel-password"),
        "ERRAND_REDIS_WAIT_REPLICAS": "1",
        "ERRAND_REDIS_WAIT_TIMEOUT_MS": "100",
    }


# -- the load ---------------------------------------------------------------------------------
@dataclass
class _Issued:
    token: str
    jti: str
    task: str
    revoked: bool = False  # /revoke answered 200
    completed: bool = False  # /tasks/complete answered 200
    tried: bool = False  # a revocation or completion was sent, whatever the answer

    @property
    def untouched(self) -> bool:
        return not self.tried


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class _Load(threading.Thread):
    """Exchange after exchange; every fifth token revoked, every fifth task completed, every
    token introspected once, all through the app. Records (time, what, status)."""

    def __init__(self, client: Any, mint: Callable[[], str]) -> None:
        super().__init__(daemon=True)
        self.client, self.mint = client, mint
        self.issued: list[_Issued] = []
        self.log: list[tuple[float, str, int]] = []
        self.problems: list[str] = []
        self.halt = threading.Event()

    def _call(self, what: str, path: str, **request: Any) -> Any:
        resp = self.client.post(path, **request)
        self.log.append((time.monotonic(), what, resp.status_code))
        if resp.status_code == 503:
            body = resp.get_json()
            if not resp.headers.get("Retry-After") or body["error"] != "temporarily_unavailable":
                self.problems.append(f"{what}: 503 without Retry-After/temporarily_unavailable")
            time.sleep(0.02)
        elif resp.status_code != 200:
            self.problems.append(f"{what}: {resp.status_code} {resp.get_data(as_text=True)}")
        return resp

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            resp = self._call("exchange", "/token", data=deploy_form(self.mint()))
            if resp.status_code != 200:
                continue
            token = resp.get_json()["access_token"]
            claims = _claims(token)
            issued = _Issued(token, claims["jti"], claims["task_id"])
            self.issued.append(issued)
            n += 1
            resp = self._call(
                "introspect", "/introspect", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET)
            )
            if resp.status_code == 200 and resp.get_json()["active"] is not True:
                self.problems.append(f"fresh token {issued.jti} inactive")
            issued.tried = n % 5 in (1, 2)
            if n % 5 == 1:
                resp = self._call("revoke", "/revoke", data={"token": token})
                issued.revoked = resp.status_code == 200
            elif n % 5 == 2:
                bearer = {"Authorization": f"Bearer {token}"}
                resp = self._call("complete", "/tasks/complete", headers=bearer)
                issued.completed = resp.status_code == 200

    def steady_since(self, start: float, successes: int = 10) -> float | None:
        """When, after `start`, the load had `successes` answers in a row that were 200."""
        run = 0
        for t, _what, status in list(self.log):
            if t < start:
                continue
            run = run + 1 if status == 200 else 0
            if run >= successes:
                return t
        return None


# -- the test ---------------------------------------------------------------------------------
def test_broker_and_workers_follow_two_failovers_and_lose_nothing_they_confirmed(
    deployment, tmp_path, int_key_dir, issuer_key, monkeypatch, caplog
):
    import workers.context

    d = deployment
    env = _environment(d, tmp_path, int_key_dir)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("REDIS_URL", "ERRAND_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
    svc = build_services(load_settings(env), config=make_config(ISSUER), fetcher=fetcher)
    # The worker's own services, built before the failovers, as a running worker holds them.
    workers.context.services.cache_clear()
    worker_svc = workers.context.services()
    load = _Load(
        make_app(svc, tmp_path).test_client(),
        lambda: gha_token(issuer_key, ISSUER, now=time.time()),
    )
    caplog.set_level(logging.WARNING, logger="broker.store.connection")
    load.start()
    try:
        _until("a first steady load", lambda: load.steady_since(0.0))
        windows = []

        # 1. Planned: writes paused on the primary, then SENTINEL FAILOVER.
        old = d.node(d.primary_port())
        start = time.monotonic()
        old.client().execute_command("CLIENT", "PAUSE", "15000", "WRITE")
        d.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = _until(
            "the Sentinels to name a new primary", lambda: d.named_primary_other_than(old.port)
        )
        windows.append((start, _until("the load to recover", lambda: load.steady_since(start))))
        # Sentinel turns the old primary into a replica of the new one (after its own delay).
        _until("the old primary to rejoin as a replica", lambda: _link_up(old.client()))
        old.client().execute_command("CLIENT", "UNPAUSE")

        # 2. Unplanned: the primary is killed.
        start = time.monotonic()
        os.kill(new.proc.pid, signal.SIGKILL)
        new.proc.wait(5)
        last = _until(
            "the Sentinels to name a live primary", lambda: d.named_primary_other_than(new.port)
        )
        windows.append((start, _until("the load to recover", lambda: load.steady_since(start))))
        steady_from = time.monotonic()
        _until("some load on the last primary", lambda: load.steady_since(steady_from, 20))
    finally:
        load.halt.set()
        load.join(10)

    assert not load.problems, load.problems[:5]
    for start, recovered in windows:
        assert recovered - start < RECOVERY_SECONDS, (start, recovered)
    # 503s only while a failover was under way; before the first and after each, none.
    outside = [
        (t, w) for t, w, s in load.log if s == 503 and not any(a <= t <= b for a, b in windows)
    ]
    assert not outside, outside[:5]
    assert any(s == 503 for _t, _w, s in load.log)  # the faults did reach the load

    # The workers' clients followed too: the clean-up jobs of completed tasks run now.
    run_jobs(worker_svc)

    primary = last.client()
    assert primary.info("replication")["role"] == "master"
    # Revocations whose WAIT fell short answered 200 with a warning: documented as losable.
    unsure = {
        r.getMessage().split("grant ")[-1].split(" ")[0]
        for r in caplog.records
        if "revocation of grant" in r.getMessage()
    }
    for issued in load.issued:
        state = introspect(issued.token, svc)
        if (issued.revoked or issued.completed) and issued.jti not in unsure:
            assert state == {"active": False}, issued
        if issued.completed:
            assert primary.exists(keys.task_tombstone(issued.task)), issued
        if issued.untouched:
            # No token without its grant: every token the load got is on the last primary.
            assert primary.exists(keys.grant(issued.jti)), issued
            assert state["active"] is True, issued
    # The clean-up jobs ran on the last primary: a completed task's grant is gone, unless
    # its job could not be enqueued during a failover (the sweep re-enqueues those).
    done = [i for i in load.issued if i.completed]
    left = [i for i in done if primary.exists(keys.grant(i.jti))]
    assert len(left) < len(done) / 2, left
    assert not any(primary.exists(Job.key_for(task_job_id(i.task))) for i in left), left
    assert sum(i.revoked for i in load.issued) and sum(i.completed for i in load.issued)


# -- a demoted primary answers READONLY: the same call reaches the new one --------------------
def test_a_write_to_a_demoted_primary_is_retried_on_the_new_one(tmp_path, monkeypatch):
    d = _Deployment(tmp_path / "redis")
    try:
        d.start(replicas=1)
        env = _environment(d, tmp_path, tmp_path)
        # Only READONLY may move this client: no periodic look at the Sentinels.
        monkeypatch.setattr(connection, "MASTER_CHECK_SECONDS", 1e9)
        client = connect(RedisLocation.of(load_settings(env)), timeout=0.5)
        client.set("k", "before")  # leaves one idle connection to the primary in the pool
        old = d.node(d.primary_port())
        d.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = _until("a new primary", lambda: d.named_primary_other_than(old.port))
        old.client().replicaof("127.0.0.1", str(new.port))  # what Sentinel does, later
        _until("the demoted primary to replicate", lambda: _link_up(old.client()))

        client.set("k", "after")  # READONLY on the old connection, then the new primary

        assert new.client().get("k") == "after"
        assert client.connection_pool.master_address == ("127.0.0.1", new.port)
    finally:
        d.stop()


# -- WAIT without replicas: grant writes fail closed, revocations answer and warn -------------
def test_wait_that_falls_short_refuses_the_token_but_not_the_revocation(
    tmp_path, int_key_dir, issuer_key, caplog
):
    d = _Deployment(tmp_path / "redis")
    try:
        lone = d.add_node("lone")  # a primary without replicas: WAIT 1 always falls short
        env = {
            "ERRAND_CONFIG": "unused.yaml",
            "ERRAND_SIGNING_KEY_DIR": str(int_key_dir),
            "REDIS_URL": f"redis://127.0.0.1:{lone.port}/0",
            "ERRAND_REDIS_PASSWORD_FILE": str(tmp_path / "pw"),
        }
        (tmp_path / "pw").write_text(REDIS_PASSWORD)
        fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
        plain = build_services(load_settings(env), config=make_config(ISSUER), fetcher=fetcher)
        issued = exchange(plain, gha_token(issuer_key, ISSUER, now=time.time()))

        waiting = build_services(
            load_settings({**env, "ERRAND_REDIS_WAIT_REPLICAS": "1"}),
            config=make_config(ISSUER),
            fetcher=fetcher,
        )
        with pytest.raises(TemporarilyUnavailable):
            exchange(waiting, gha_token(issuer_key, ISSUER, now=time.time()))
        caplog.set_level(logging.WARNING, logger="broker.store.connection")
        lone.client().script_flush()  # as after a restart: the pipelined EVALSHA reloads it
        revoke_token(issued.access_token, waiting, actor="holder")  # answers: no exception
        assert introspect(issued.access_token, waiting) == {"active": False}
        assert any("reached 0 of 1 replica" in r.getMessage() for r in caplog.records)
    finally:
        d.stop()


# -- settings ---------------------------------------------------------------------------------
BASE = {"ERRAND_CONFIG": "c.yaml", "ERRAND_SIGNING_KEY_DIR": "keys"}
SENTINELS = {
    "ERRAND_REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26380",
    "ERRAND_REDIS_SENTINEL_SERVICE": "m",
}


def test_sentinel_settings_are_read_from_the_environment() -> None:
    s = load_settings({**BASE, **SENTINELS, "ERRAND_REDIS_DB": "3"})
    assert s.redis_url == ""
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (s.redis_sentinel_service, s.redis_db, s.redis_wait_replicas) == ("m", 3, 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({**SENTINELS, "REDIS_URL": "redis://r:6379/0"}, "not both"),
        ({"ERRAND_REDIS_SENTINELS": "10.0.0.1:26379"}, "ERRAND_REDIS_SENTINEL_SERVICE"),
        ({"ERRAND_REDIS_SENTINELS": "10.0.0.1", "ERRAND_REDIS_SENTINEL_SERVICE": "m"}, "host:port"),
        ({"REDIS_URL": "redis://r/0", "ERRAND_REDIS_DB": "2"}, "would be ignored"),
        ({"REDIS_URL": "redis://r/0", "ERRAND_REDIS_SENTINEL_SERVICE": "m"}, "would be ignored"),
        ({"REDIS_URL": "redis://:pw@r/0", "ERRAND_REDIS_PASSWORD_FILE": "f"}, "one place"),
        (
            {
                "REDIS_URL": "redis://r/0",
                "ERRAND_REDIS_WAIT_REPLICAS": "1",
                "ERRAND_REDIS_WAIT_TIMEOUT_MS": "0",
            },
            "at least 1",
        ),
        (
            {
                "REDIS_URL": "redis://r/0",
                "ERRAND_REDIS_WAIT_REPLICAS": "1",
                "ERRAND_REDIS_WAIT_TIMEOUT_MS": "400",
            },
            "half",
        ),
        ({"REDIS_URL": "redis://r/0", "ERRAND_REDIS_WAIT_REPLICAS": "-1"}, "between 0"),
        ({}, "ERRAND_REDIS_SENTINELS"),
    ],
)
def test_contradictory_or_incomplete_redis_settings_stop_the_process(extra, message) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({**BASE, **extra})
