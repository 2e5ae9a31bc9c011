"""Real processes for the end-to-end suite: gunicorn serving broker.app:create_app() and
`python -m workers`, both on 127.0.0.1, configured only through the environment and a YAML
file, the way an operator runs them. Tests talk to them over HTTP."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from broker.dev.issuer import github_claims
from tests.support.builders import NO_LIMITS, set_limits
from tests.support.forms import deploy_form
from tests.support.servers import FaultIssuer

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ERRAND = str(VENV_BIN / "errand")
GUNICORN_CONF = str(ROOT / "config" / "gunicorn.conf.py")

AUDIENCE = "errand-e2e"  # what subject tokens must name
DEPLOY_AUD = "https://deploy.acme.example"
DPOP_AUD = "https://dpop-only.acme.example"  # the inventory requires DPoP for it
CLIENT_ID = "demo-rs"
EXPIRY_IDENTITY = "acme-app-expiry"
EXPIRY_OWNER = "expiry-team"
EXPIRY_REF = "refs/heads/expiry"


# Only 127.0.0.1 traffic, never through a proxy from the environment.
LOCAL = requests.Session()
LOCAL.trust_env = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def config_doc(broker_url: str, issuer_url: str, secret_file: Path) -> dict[str, Any]:
    """The shape of config/errand.dev.yaml, trusting the test's dev issuer."""
    return {
        "broker": {
            "issuer": broker_url,
            "default_token_ttl_seconds": 300,
            "max_token_ttl_seconds": 900,
            # Load stories must not trip the abuse limits (tests/security covers those).
            "limits": dict(NO_LIMITS),
        },
        "issuers": [
            {
                "id": "dev-ci",
                "issuer": issuer_url,
                "audience": AUDIENCE,
                "algorithms": ["ES256"],
                "refresh_cooldown_seconds": 10,
            }
        ],
        "identities": [
            {
                "id": "acme-app-deploy",
                "type": "service",
                "owner": "platform-team",
                "purpose": "Deploy acme/app from its main branch",
                "match": [
                    {
                        "issuer": "dev-ci",
                        "claims": {
                            "repository_id": "100200300",
                            "repository_owner_id": "4242",
                            "ref": "refs/heads/main",
                            "event_name": "push",
                        },
                    }
                ],
                "allow": {
                    "audiences": [DEPLOY_AUD, DPOP_AUD],
                    "scopes": ["deploy:read", "deploy:write"],
                    "default_scopes": ["deploy:read"],
                    "max_ttl_seconds": 600,
                },
            },
            {
                # Its own identity and owner, so the expiry story's indexes are its alone.
                "id": EXPIRY_IDENTITY,
                "type": "service",
                "owner": EXPIRY_OWNER,
                "purpose": "Short-lived smoke tokens",
                "match": [
                    {
                        "issuer": "dev-ci",
                        "claims": {
                            "repository_id": "100200300",
                            "repository_owner_id": "4242",
                            "ref": EXPIRY_REF,
                        },
                    }
                ],
                "allow": {
                    "audiences": [DEPLOY_AUD],
                    "scopes": ["deploy:read"],
                    "default_scopes": ["deploy:read"],
                    "max_ttl_seconds": 60,
                },
            },
        ],
        "clients": [{"client_id": CLIENT_ID, "secret_file": str(secret_file)}],
        "dpop": {"required_audiences": [DPOP_AUD]},
    }


def _write_secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Stack:
    """gunicorn + worker for one configuration; start() waits for /readyz."""

    workdir: Path
    redis_url: str
    issuer_url: str
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_secret = secrets.token_urlsafe(24)
        self.admin_token = secrets.token_urlsafe(32)
        self.secret_file = _write_secret(self.workdir / "demo-rs.secret", self.client_secret)
        self.admin_token_file = _write_secret(self.workdir / "admin-token", self.admin_token)
        self.key_dir = self.workdir / "keys"
        out = subprocess.run(
            [ERRAND, "keys", "generate", "--dir", str(self.key_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        self.kid = out.stdout.strip()
        self.config_file = self.workdir / "errand.yaml"
        self.config_file.write_text(
            yaml.safe_dump(config_doc(self.url, self.issuer_url, self.secret_file), sort_keys=False)
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("ERRAND_") and k != "REDIS_URL"
        }
        env.update(
            ERRAND_BIND=f"127.0.0.1:{self.port}",
            ERRAND_CONFIG=str(self.config_file),
            REDIS_URL=self.redis_url,
            ERRAND_SIGNING_KEY_DIR=str(self.key_dir),
            ERRAND_ADMIN_TOKEN_FILE=str(self.admin_token_file),
            ERRAND_ENV="production",
            ERRAND_WEB_WORKERS="2",
            ERRAND_SWEEP_INTERVAL_SECONDS="1",
            PYTHONUNBUFFERED="1",
            NO_PROXY="127.0.0.1,localhost",
        )
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            argv,
            env=self.env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches its children
        )
        log.close()

    def start(self, timeout: float = 30.0) -> Stack:
        py = sys.executable
        self._spawn("web", [py, "-m", "gunicorn", "-c", GUNICORN_CONF, "broker.app:create_app()"])
        self._spawn("worker", [py, "-m", "workers"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            try:
                if LOCAL.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the broker did not become ready:\n{self.logs()}")

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for name in ("web", "worker"):
            path = self.workdir / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-tail:])
        return "\n".join(parts)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL the process group of each process we started."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group we created


# -- HTTP helpers ---------------------------------------------------------------------------
def mint(dev_issuer: Any, **overrides: Any) -> str:
    """A GitHub-shaped subject token from the test's dev issuer, with a fresh jti."""
    headers = overrides.pop("_headers", None)
    claims = github_claims(issuer=dev_issuer.issuer, audience=AUDIENCE)
    claims.update(overrides)
    return str(dev_issuer.mint(claims, headers=headers))


def post_token(
    stack: Stack,
    subject_token: str,
    session: Any = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> requests.Response:
    return (session or LOCAL).post(
        stack.url + "/token", data=deploy_form(subject_token, **extra), headers=headers, timeout=10
    )


def introspect(stack: Stack, token: str, session: Any = None) -> requests.Response:
    return (session or LOCAL).post(
        stack.url + "/introspect",
        data={"token": token},
        auth=(CLIENT_ID, stack.client_secret),
        timeout=10,
    )


def issue(stack: Stack, dev_issuer: Any, session: Any = None, **extra: Any) -> dict[str, Any]:
    resp = post_token(stack, mint(dev_issuer), session, **extra)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def errand_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    return subprocess.run(
        [ERRAND, *args, "--url", stack.url, "--admin-token-file", str(stack.admin_token_file)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )


# -- a Stack with extra environment and a tuned configuration --------------------------------
@dataclass
class TunedStack(Stack):
    """Stack, plus extra environment and a hook to edit its YAML before start."""

    extra_env: dict[str, str] = field(default_factory=dict)
    limits: dict[str, Any] | None = None  # None: every abuse limit off

    def __post_init__(self) -> None:
        super().__post_init__()
        self.edit_config(lambda doc: set_limits(doc["broker"], self.limits))

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        return env

    def edit_config(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        doc = yaml.safe_load(self.config_file.read_text())
        mutate(doc)
        self.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def restart_worker(self) -> None:
        self._spawn("worker", [sys.executable, "-m", "workers"])

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (the RQ work horse included)."""
        proc = self.procs["worker"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def warm_up(stack: Stack, issuer: FaultIssuer, timeout: float = 10.0) -> None:
    """One sequential exchange, so the issuer's JWKS is fetched and mirrored in Redis before a
    test sends concurrent requests (see test_cold_fleet_shares_the_first_fetch)."""
    http = requests.Session()
    http.trust_env = False
    deadline = time.monotonic() + timeout
    while True:
        claims = github_claims(issuer=issuer.issuer, audience=AUDIENCE, now=time.time())
        resp = http.post(stack.url + "/token", data=deploy_form(issuer.mint(claims)), timeout=10)
        if resp.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up exchange failed: {resp.status_code} {resp.text}")
        time.sleep(0.2)


@contextlib.contextmanager
def running(stack: TunedStack) -> Iterator[TunedStack]:
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
