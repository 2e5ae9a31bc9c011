"""`errand run`, the one-command development stack, and its clean shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.clocks import wait_until
from tests.support.forms import deploy_form
from tests.support.stack import ERRAND, LOCAL, ROOT, free_port, port_is_free

pytestmark = pytest.mark.e2e


def _port_pair() -> int:
    """A port whose successor is free too: `errand run` puts its dev issuer on port + 1."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no free pair of ports")


def _children() -> dict[int, int]:
    """pid -> ppid for every process we can see (from /proc)."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(entry.name)] = int(fields[1])
    return out


def descendants(root: int) -> set[int]:
    tree = _children()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in tree.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class DevRun:
    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.port = _port_pair()
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"errand-run-{self.port}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [ERRAND, "run", "--port", str(self.port), "--state-dir", str(state_dir)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.seen: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 40.0) -> None:
        def ready() -> bool:
            self.seen |= descendants(self.proc.pid)
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"errand run exited early ({self.proc.returncode}):\n{self.output()}"
                )
            try:
                return LOCAL.get(self.url + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(ready, timeout=timeout, interval=0.2), self.output()
        # The "try it" text is printed once readiness is seen by errand itself.
        assert wait_until(lambda: "Try a real exchange" in self.output(), timeout=10), self.output()
        time.sleep(0.5)  # let the worker's scheduler child appear
        self.seen |= descendants(self.proc.pid)

    def interrupt_and_wait(self) -> int:
        self.seen |= descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def reap_leftovers(self) -> list[str]:
        """Kill (by pid) anything we started that outlived `errand run`; report what it was."""
        left = [pid for pid in self.seen if alive(pid)]
        described = [f"{pid}: {cmdline(pid)}" for pid in left]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return described


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ERRAND_") and k not in ("REDIS_URL",)
    }
    env["PYTHONUNBUFFERED"] = "1"  # so its banner reaches our log file as it is printed
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


@pytest.fixture
def dev_run_factory(tmp_path: Path) -> Any:
    runs: list[DevRun] = []

    def start(**env: str) -> DevRun:
        run = DevRun(tmp_path / f"state-{len(runs)}", _env(**env))
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(5)
        run.reap_leftovers()


def test_errand_run_with_embedded_redis(dev_run_factory):
    run = dev_run_factory()
    run.wait_ready()
    out = run.output()
    assert "REDIS_URL is not set: started an embedded redis-server" in out
    assert "DEVELOPMENT ONLY" in out
    issuer_url = f"http://127.0.0.1:{run.port + 1}"
    assert issuer_url in out

    # The exchange the banner prints, step by step.
    minted = subprocess.run(
        [ERRAND, "dev-token", "--issuer", issuer_url, "--state-dir", str(run.state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        cwd=ROOT,
        check=True,
    )
    subject_token = minted.stdout.strip()
    resp = LOCAL.post(run.url + "/token", data=deploy_form(subject_token), timeout=10)
    assert resp.status_code == 200, resp.text
    access = resp.json()["access_token"]
    secret = (run.state_dir / "demo-rs.secret").read_text().strip()
    info = LOCAL.post(
        run.url + "/introspect", data={"token": access}, auth=("demo-rs", secret), timeout=10
    ).json()
    assert info["active"] is True
    assert info["sub"] == "acme-app-deploy"
    # Secrets were written 0600 into the state directory.
    for name in ("admin-token", "demo-rs.secret"):
        assert (run.state_dir / name).stat().st_mode & 0o077 == 0

    kinds = " ".join(cmdline(pid) for pid in run.seen)
    assert "redis-server" in kinds and "gunicorn" in kinds and "-m workers" in kinds, kinds

    rc = run.interrupt_and_wait()
    assert rc == 0, run.output()
    assert wait_until(lambda: not any(alive(pid) for pid in run.seen), timeout=15, interval=0.2)
    leftovers = run.reap_leftovers()
    assert leftovers == [], f"processes outlived errand run: {leftovers}"
    assert not _reachable(run.url + "/healthz")


def test_errand_run_with_redis_url_uses_that_redis(dev_run_factory, redis_server, redis_dbs):
    # Its own db on the private server. The default user is `nopass`, so any password is
    # accepted: enough to check that the password is never printed.
    password = "pw-must-not-be-printed-0123"
    db = redis_dbs.number("e2e-dev-run")
    url = redis_dbs.url("e2e-dev-run", password=password)
    run = dev_run_factory(REDIS_URL=url)
    run.wait_ready()
    out = run.output()
    assert f"using Redis at 127.0.0.1:{redis_server.port}/{db} (from REDIS_URL)" in out
    assert password not in out
    assert "started an embedded redis-server" not in out
    assert (
        "WARNING: that Redis runs maxmemory-policy" not in out
    )  # the private server is noeviction
    assert not any("redis-server" in cmdline(pid) for pid in run.seen)
    run.proc.terminate()  # SIGTERM takes the same clean path as Ctrl-C
    assert run.proc.wait(30) == 0, run.output()
    assert wait_until(lambda: not any(alive(pid) for pid in run.seen), timeout=15, interval=0.2)
    assert run.reap_leftovers() == []
    assert redis_server.proc.poll() is None  # the Redis it was given is not its to stop
    redis_dbs.flush("e2e-dev-run")


def _reachable(url: str) -> bool:
    try:
        LOCAL.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True
