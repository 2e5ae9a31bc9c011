"""`errand run`: a development stack in one command.

Starts Redis (an embedded redis-server unless REDIS_URL is set), a local dev OIDC issuer, the
broker under gunicorn and an RQ worker, then prints how to try a real exchange. Secrets it
needs (signing key, admin credential, demo client secret) are generated into the state
directory (.errand/) with mode 0600 on first run and reused after.

Its run directory (STATE_DIR/run) holds a lock file naming the pid of the `errand run` that
owns the state directory, and the broker's metrics files (`metrics/`, emptied at start,
removed at exit). A second `errand run` on the same state directory, or on a port already
taken, is refused before anything starts.

Children run in process groups of their own, so a Ctrl-C in the terminal reaches this
process only, and it stops them in order: the broker, the worker, the dev issuer, then
Redis. SIGINT, SIGTERM and SIGHUP are handled explicitly (a script may have started it with
SIGINT ignored). However it ends, short of SIGKILL, nothing it started is left running: each
child gets SIGTERM, then its process group and every process below it get SIGKILL (on Linux
it adopts orphans as a subreaper, so an RQ work horse whose worker died is found too).

One process supervisor, kept in one module so its start-up and shutdown order reads top to
bottom."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from broker.config import ConfigError, load_config
from broker.dev.embedded_redis import RedisProcess
from broker.dev.issuer import DevIssuer, load_or_create_key
from broker.store.connection import connect
from broker.tokens.keyring import SigningKey, generate_key

ROOT = Path(__file__).resolve().parents[2]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CHILD_STOP_SECONDS = 15.0  # graceful stop of each child before SIGKILL
READY_SECONDS = 30.0


class RunRefused(Exception):
    """`errand run` cannot start; the message is one line for the developer."""


class _Stop(BaseException):
    """A stop signal arrived. BaseException, like KeyboardInterrupt: no `except Exception`
    on the way swallows it."""


class _StopSignals:
    """SIGINT and SIGTERM raise _Stop, whatever this process inherited (SIGINT may come in
    ignored); so does SIGHUP, unless it came in ignored (nohup). Once the stack is stopping
    they are only noted: the shutdown is bounded anyway. The previous handlers come back on
    exit."""

    def __init__(self) -> None:
        self.stopping = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Stop(signum)

    def __enter__(self) -> _StopSignals:
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if sig == signal.SIGHUP and previous == signal.SIG_IGN:
                continue  # started under nohup: keep running when the terminal goes
            self._previous[sig] = previous
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def run_lock(run_dir: Path, state_dir: Path) -> Iterator[None]:
    """Hold STATE_DIR/run/errand-run.pid locked (flock) while the stack runs. The kernel
    drops the lock when this process dies, however it dies: a stale file never blocks."""
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(run_dir / "errand-run.pid", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise RunRefused(
                f"another `errand run` (pid {holder}) is using {state_dir}: stop it first, "
                "or give this one another --state-dir and --port"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # never unlinked: unlinking a lock file races a new run
    finally:
        os.close(fd)


def port_problem(port: int) -> str | None:
    """Why nothing could listen on 127.0.0.1:port, or None."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OverflowError:
            return f"port {port} is not a port number"
        except OSError as err:
            return f"127.0.0.1:{port}: {err.strerror or err}"
    return None


def _secret_file(path: Path, nbytes: int = 32) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(nbytes) + "\n")
    return path


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root` (Linux /proc; empty elsewhere), pid -> start time."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(int(entry.name))
            if fields and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
                started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        for pid in children.get(frontier.pop(), []):
            if pid not in found:
                found[pid] = started[pid]
                frontier.append(pid)
    return found


def kill_remaining(family: dict[int, str]) -> None:
    """SIGKILL each process still alive with the same start time (never a recycled pid)."""
    for pid, start in family.items():
        fields = _proc_stat(pid)
        if fields and fields[0] != "Z" and fields[19] == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _become_subreaper() -> None:
    """Linux: processes orphaned below us (an RQ work horse whose worker died) are re-parented
    to this process rather than to init, so the final sweep still finds them."""
    pr_set_child_subreaper = 36  # <linux/prctl.h>
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no prctl, no subreaper
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]


@dataclass
class _Stack:
    """What `errand run` started, stopped in reverse order of need."""

    children: list[_Child] = field(default_factory=list)
    issuer: DevIssuer | None = None
    redis: RedisProcess | None = None

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # A process group of its own: a terminal's Ctrl-C reaches `errand run` only, which
        # then stops the children in order, and killpg reaches a child's own children.
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        self.children.append(_Child(name, proc))

    def exited(self) -> _Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop(self) -> None:
        for child in self.children:  # the broker first: no new requests, then the worker
            _stop_child(child)
        if self.issuer is not None:
            self.issuer.stop()
        if self.redis is not None:
            self.redis.stop()
        # Anything still below us: orphans the subreaper took in, a child forked mid-start.
        kill_remaining(descendants(os.getpid()))
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # reap what the subreaper inherited
                pass


def _stop_child(child: _Child) -> None:
    family = descendants(child.proc.pid)  # now: the RQ work horse has a group of its own
    if child.proc.poll() is None:
        child.proc.terminate()  # gunicorn: graceful stop; rq: warm shutdown
        try:
            child.proc.wait(CHILD_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"errand: {child.name} did not stop in time; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, signal.SIGKILL)
    kill_remaining(family)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.proc.wait(5)


def _wait_ready(url: str, stack: _Stack, timeout: float = READY_SECONDS) -> bool:
    """Poll /readyz until it answers 200, a child exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    with requests.Session() as http:
        http.trust_env = False  # 127.0.0.1: never through a proxy from the environment
        while time.monotonic() < deadline and stack.exited() is None:
            try:
                if http.get(url, timeout=1).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.2)
    return False


def redis_where(redis_url: str) -> str:
    """host:port/db of a Redis URL: never its credentials."""
    parts = urlsplit(redis_url)
    return parts.netloc.rsplit("@", 1)[-1] + parts.path


def _check_redis(redis_url: str) -> None:
    where = redis_where(redis_url)
    client = connect(redis_url, timeout=2, decode=False)
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        print(f"errand: WARNING: cannot read maxmemory-policy from {where}; check it is noeviction")
        return
    except redis.RedisError as err:
        raise RunRefused(
            f"cannot reach Redis at {where} (REDIS_URL): {type(err).__name__}"
        ) from err
    finally:
        client.close()
    if policy != "noeviction":
        print(f"errand: WARNING: that Redis runs maxmemory-policy={policy}, not noeviction")


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return path


def run_dev(port: int, state_dir: Path) -> int:
    """Run the stack until a stop signal (exit 0) or until a child exits (exit 1). Raises
    RunRefused when the stack cannot start; whatever was started by then is stopped."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = state_dir / "run"
    with _StopSignals() as signals:
        try:
            with run_lock(run_dir, state_dir):
                stack = _Stack()
                try:
                    return _start_and_watch(stack, _prepare(port, state_dir), run_dir)
                finally:
                    signals.stopping = True  # a second Ctrl-C must not cut the shutdown short
                    stack.stop()
                    shutil.rmtree(run_dir / "metrics", ignore_errors=True)
        except _Stop:
            return 0


@dataclass(frozen=True)
class _Plan:
    env: dict[str, str]
    port: int
    dev_port: int
    dev_key: SigningKey
    state_dir: Path
    redis_url: str | None


def _prepare(port: int, state_dir: Path) -> _Plan:
    """Everything that can be checked before a process starts: ports, secrets, the
    configuration file, a given Redis."""
    env = dict(os.environ)
    dev_port = int(env.get("ERRAND_DEV_ISSUER_PORT", str(port + 1)))
    for wanted in (port, dev_port):
        problem = port_problem(wanted)
        if problem:
            raise RunRefused(f"cannot listen on {problem} (is another stack running?)")
    key_dir = state_dir / "keys"
    if not list(key_dir.glob("*.pem")):
        generate_key(key_dir)
    admin_file = _secret_file(state_dir / "admin-token")
    client_secret = _secret_file(state_dir / "demo-rs.secret")
    dev_key = load_or_create_key(state_dir / "dev-issuer" / "key.pem")
    redis_url = env.get("REDIS_URL") or env.get("ERRAND_REDIS_URL")
    env.update(
        ERRAND_ENV="development",
        ERRAND_CONFIG=env.get("ERRAND_CONFIG", str(ROOT / "config" / "errand.dev.yaml")),
        ERRAND_SIGNING_KEY_DIR=str(key_dir),
        ERRAND_ADMIN_TOKEN_FILE=str(admin_file),
        ERRAND_BIND=f"127.0.0.1:{port}",
        ERRAND_PUBLIC_URL=env.get("ERRAND_PUBLIC_URL", f"http://127.0.0.1:{port}"),
        ERRAND_DEV_ISSUER_URL=f"http://127.0.0.1:{dev_port}",
        ERRAND_DEMO_CLIENT_SECRET_FILE=str(client_secret.resolve()),
    )
    try:  # the broker would refuse it in every gunicorn worker: say it once, here
        load_config(Path(env["ERRAND_CONFIG"]), env)
    except ConfigError as err:
        raise RunRefused(f"{env['ERRAND_CONFIG']}: {err}") from err
    if redis_url:
        print(f"errand: using Redis at {redis_where(redis_url)} (from REDIS_URL)")
        _check_redis(redis_url)
    return _Plan(env, port, dev_port, dev_key, state_dir, redis_url)


def _start_and_watch(stack: _Stack, plan: _Plan, run_dir: Path) -> int:
    _become_subreaper()
    env = dict(plan.env)
    if plan.redis_url:
        env["REDIS_URL"] = plan.redis_url
    else:
        try:
            stack.redis = RedisProcess(plan.state_dir / "redis", new_session=True)
            stack.redis.start()
        except RuntimeError as err:  # no redis-server, or it would not start
            raise RunRefused(f"embedded redis-server: {err} (or set REDIS_URL)") from err
        env["REDIS_URL"] = stack.redis.url
        print(
            f"errand: REDIS_URL is not set: started an embedded redis-server at "
            f"{stack.redis.url} (binary {stack.redis.binary}). This is for DEVELOPMENT ONLY: "
            "it keeps nothing on disk. Set REDIS_URL to use your own Redis."
        )
    try:
        stack.issuer = DevIssuer(plan.dev_key, port=plan.dev_port).start()
    except OSError as err:
        raise RunRefused(
            f"the dev issuer cannot listen on 127.0.0.1:{plan.dev_port}: {err.strerror}"
        ) from err

    web_env = dict(env)
    if not web_env.get("PROMETHEUS_MULTIPROC_DIR"):  # metrics files: emptied at start
        web_env["PROMETHEUS_MULTIPROC_DIR"] = str(_fresh_dir(run_dir / "metrics"))
    stack.spawn("the broker (errand serve)", [sys.executable, "-m", "broker.cli", "serve"], web_env)
    # The same metrics directory: the broker's /metrics then has the worker's counts too.
    stack.spawn("the worker", [sys.executable, "-m", "workers"], web_env)

    url = env["ERRAND_PUBLIC_URL"]
    if _wait_ready(f"http://127.0.0.1:{plan.port}/readyz", stack):
        secret = Path(env["ERRAND_DEMO_CLIENT_SECRET_FILE"])
        print(_try_it(url, stack.issuer.issuer, plan.state_dir, secret))
    elif stack.exited() is None:
        print("errand: the broker did not become ready; see the log above", file=sys.stderr)
    while True:
        child = stack.exited()
        if child is not None:
            print(
                f"errand: {child.name} exited with status {child.proc.returncode}; shutting down",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)


def _try_it(url: str, issuer_url: str, state_dir: Path, client_secret: Path) -> str:
    return f"""
errand is running at {url} (development mode), with an RQ worker and a dev OIDC issuer at
{issuer_url}. Try a real exchange in another shell:

  # a GitHub-Actions-shaped ID token from the dev issuer:
  TOKEN=$(.venv/bin/errand dev-token --issuer {issuer_url} --state-dir {state_dir})
  curl -s {url}/token \\
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\
    --data-urlencode subject_token="$TOKEN" \\
    -d audience=https://deploy.acme.example -d scope=deploy:write

  # introspect it as the resource server 'demo-rs':
  curl -s -u demo-rs:$(cat {client_secret}) {url}/introspect --data-urlencode token=<access_token>
  # complete its task (every token of the task dies):
  curl -s -X POST -H "Authorization: Bearer <access_token>" {url}/tasks/complete
  # operator views (admin credential in {state_dir}/admin-token):
  .venv/bin/errand grants --url {url} --admin-token-file {state_dir}/admin-token
  .venv/bin/errand audit <task_id> --url {url} --admin-token-file {state_dir}/admin-token
  # or in a browser: {url}/console (sign in with the contents of {state_dir}/admin-token)
"""
