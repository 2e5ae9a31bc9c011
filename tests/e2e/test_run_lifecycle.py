"""`errand run` on its rough edges: a second run (same state directory, or a port already
taken) is refused before it starts anything; a run that cannot start says why in one line
and leaves nothing behind; a run started with SIGINT ignored still stops on SIGINT; the
broker's metrics files live in the run directory and go away with the run.

Each refused run is started under a small harness that adopts orphans (a Linux subreaper),
so a process the run left behind is found even after the run itself has exited."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.clocks import wait_until
from tests.support.stack import ERRAND, LOCAL, ROOT, free_port, port_is_free

pytestmark = pytest.mark.e2e

READY_SECONDS = 60.0
STOP_SECONDS = 30.0

# Runs argv as a child, adopting whatever it orphans; prints what was left alive, kills it.
HARNESS = r"""
import ctypes, json, os, signal, subprocess, sys
from pathlib import Path
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
try:
    proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
except subprocess.TimeoutExpired as exc:  # it did not refuse: it ran (and was killed)
    rc, out, err = None, str(exc.stdout), str(exc.stderr)

def stat(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None

left = {}
for entry in Path("/proc").iterdir():
    fields = stat(entry.name) if entry.name.isdigit() else None
    if fields and fields[0] != "Z" and int(fields[1]) == os.getpid():
        cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
        left[entry.name] = cmd.decode(errors="replace")
        os.kill(int(entry.name), signal.SIGKILL)
print(json.dumps({"rc": rc, "out": out, "err": err, "left": left}))
"""


def _port_pair() -> int:
    """A port whose successor is free too: `errand run` puts its dev issuer on port + 1."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no free pair of ports")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ERRAND_") and k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env.update(PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(root: int) -> set[int]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    frontier = [root]
    while frontier:
        for pid in tree.get(frontier.pop(), []):
            if pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


class Run:
    """One `errand run` in the background, its output in a file."""

    def __init__(self, state_dir: Path, port: int, **popen: Any) -> None:
        self.state_dir, self.port = state_dir, port
        self.log = state_dir.parent / f"run-{port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [ERRAND, "run", "--port", str(port), "--state-dir", str(state_dir)],
                env=_env(),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                **popen,
            )
        self.seen: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            self.seen |= descendants(self.proc.pid)
            assert self.proc.poll() is None, f"errand run exited early:\n{self.output()}"
            return "Try a real exchange" in self.output()

        assert wait_until(ready, timeout=READY_SECONDS, interval=0.2), self.output()
        self.seen |= descendants(self.proc.pid)

    def signal_and_wait(self, signum: int) -> int:
        self.seen |= descendants(self.proc.pid)
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"errand run did not stop within {STOP_SECONDS}s of signal {signum}")

    def kill_all(self) -> None:
        """Teardown: whatever is still alive, by pid."""
        self.seen |= descendants(self.proc.pid)
        for pid in [self.proc.pid, *self.seen]:
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def refused_run(*argv: str, **env: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", HARNESS, ERRAND, "run", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(**env),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    run = Run(tmp_path_factory.mktemp("run-lifecycle") / "state", _port_pair())
    try:
        run.wait_ready()
        yield run
    finally:
        run.kill_all()


def test_a_second_run_on_the_same_state_dir_is_refused_before_it_starts(running, tmp_path):
    result = refused_run("--port", str(_port_pair()), "--state-dir", str(running.state_dir))
    assert result["rc"] == 1, result
    assert result["err"].strip() == (
        f"errand: another `errand run` (pid {running.proc.pid}) is using {running.state_dir}: "
        "stop it first, or give this one another --state-dir and --port"
    )
    assert result["left"] == {}, "the refused run left processes behind"
    assert running.proc.poll() is None  # the first one is untouched
    assert LOCAL.get(f"http://127.0.0.1:{running.port}/readyz", timeout=5).status_code == 200


def test_a_run_on_a_taken_port_is_refused_before_it_starts(running, tmp_path):
    result = refused_run("--port", str(running.port), "--state-dir", str(tmp_path / "other"))
    assert result["rc"] == 1, result
    assert result["err"].strip() == (
        f"errand: cannot listen on 127.0.0.1:{running.port}: Address already in use "
        "(is another stack running?)"
    )
    assert result["left"] == {}, "the refused run left processes behind"


def test_the_run_keeps_its_lock_and_metrics_in_its_run_dir(running):
    run_dir = running.state_dir / "run"
    assert (run_dir / "errand-run.pid").read_text().strip() == str(running.proc.pid)
    LOCAL.get(f"http://127.0.0.1:{running.port}/healthz", timeout=5)
    assert wait_until(lambda: any((run_dir / "metrics").glob("*.db")), timeout=10)
    assert "Control socket" not in running.output()  # no socket shared by every stack


@pytest.mark.parametrize(
    "what",
    ["bad-config", "unreachable-redis"],
)
def test_a_run_that_cannot_start_says_why_in_one_line(what, tmp_path):
    if what == "bad-config":
        bad = tmp_path / "bad.yaml"
        bad.write_text("broker: {colour: blue}\n")
        env, expected = {"ERRAND_CONFIG": str(bad)}, f"errand: {bad}: invalid configuration"
    else:
        url = f"redis://127.0.0.1:{free_port()}/0"
        env, expected = {"REDIS_URL": url}, "errand: cannot reach Redis at 127.0.0.1:"
    started = time.monotonic()
    result = refused_run("--port", str(_port_pair()), "--state-dir", str(tmp_path / "state"), **env)
    assert result["rc"] == 1, result
    assert "Traceback" not in result["err"] + result["out"], result["err"]
    assert result["err"].startswith(expected), result["err"]
    assert result["left"] == {}, "the run left processes behind"
    assert time.monotonic() - started < 30


def test_sigint_stops_a_run_started_with_sigint_ignored(tmp_path):
    """As a shell script's background job is started: SIGINT ignored, inherited."""
    run = Run(
        tmp_path / "state",
        _port_pair(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        run.wait_ready()
        kinds = " ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            for pid in run.seen
            if alive(pid)
        )
        assert "redis-server" in kinds and "gunicorn" in kinds and "workers" in kinds, kinds
        assert run.signal_and_wait(signal.SIGINT) == 0, run.output()
        assert wait_until(lambda: not any(alive(p) for p in run.seen), timeout=15)
        assert not (run.state_dir / "run" / "metrics").exists()
        with pytest.raises(requests.RequestException):
            LOCAL.get(f"http://127.0.0.1:{run.port}/healthz", timeout=2)
    finally:
        run.kill_all()
