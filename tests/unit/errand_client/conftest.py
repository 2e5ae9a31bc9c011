"""A fake Errand broker and a fake GitHub Actions token service on 127.0.0.1, plus a
simulated runner environment (tmp GITHUB_ENV/GITHUB_OUTPUT/GITHUB_STATE, RUNNER_TEMP,
GITHUB_WORKSPACE). No external services, no Redis."""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from errand_client.ci import Context

REQUEST_TOKEN = "runtime-request-token-0123456789"


def fake_jwt(claims: dict[str, Any]) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'ES256', 'typ': 'JWT'})}.{seg(claims)}.{secrets.token_urlsafe(16)}"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out on purpose leaves a broken pipe behind


class FakeBroker:
    """Scripted answers: push (status, body, headers) onto `token_script` / `complete_script`;
    when a script is empty the broker answers success. Every request is recorded."""

    def __init__(self) -> None:
        self.token_script: list[tuple[int, Any, dict[str, str]]] = []
        self.complete_script: list[tuple[int, Any, dict[str, str]]] = []
        self.token_requests: list[dict[str, list[str]]] = []
        self.complete_requests: list[str] = []  # the Authorization headers
        self.oidc_requests: list[dict[str, Any]] = []
        self.oidc_script: list[int] = []  # statuses to answer before succeeding
        self.issued: list[str] = []
        self.expires_in = 300
        self.delay_seconds = 0.0
        self._lock = threading.Lock()
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                ctype = "text/html" if isinstance(body, bytes) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/oidc":
                    self._send(404, {"error": "not_found"})
                    return
                query = parse_qs(parts.query)
                with broker._lock:
                    broker.oidc_requests.append(
                        {"query": query, "authorization": self.headers.get("Authorization")}
                    )
                    status = broker.oidc_script.pop(0) if broker.oidc_script else 200
                if self.headers.get("Authorization") != f"bearer {REQUEST_TOKEN}":
                    self._send(401, {"message": "bad request token"})
                    return
                if status != 200:
                    self._send(status, {"message": "scripted"})
                    return
                aud = query.get("audience", [""])[0]
                self._send(200, {"value": fake_jwt({"aud": aud, "jti": secrets.token_hex(8)})})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if broker.delay_seconds:
                    time.sleep(broker.delay_seconds)
                if self.path == "/token":
                    form = parse_qs(raw, keep_blank_values=True)
                    with broker._lock:
                        broker.token_requests.append(form)
                        scripted = broker.token_script.pop(0) if broker.token_script else None
                    if scripted is not None:
                        self._send(*scripted)
                        return
                    token = "eyJ.at-" + secrets.token_urlsafe(24)
                    broker.issued.append(token)
                    self._send(
                        200,
                        {
                            "access_token": token,
                            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                            "token_type": "Bearer",
                            "expires_in": broker.expires_in,
                            "scope": (form.get("scope") or ["deploy:read"])[0],
                            "task_id": (form.get("task_id") or ["task-generated"])[0],
                        },
                        {"Cache-Control": "no-store"},
                    )
                elif self.path == "/tasks/complete":
                    with broker._lock:
                        broker.complete_requests.append(self.headers.get("Authorization", ""))
                        scripted = broker.complete_script.pop(0) if broker.complete_script else None
                    if scripted is not None:
                        self._send(*scripted)
                        return
                    self._send(200, {"task_id": "t", "completed": True})
                else:
                    self._send(404, {"error": "not_found"})

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def start(self) -> FakeBroker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def subject_tokens(self) -> list[str]:
        return [r["subject_token"][0] for r in self.token_requests]

    def unavailable(self, retry_after: str | None = "1") -> tuple[int, Any, dict[str, str]]:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"error": "temporarily_unavailable", "error_description": "retry later"}
        return (503, body, headers)


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    server = FakeBroker().start()
    yield server
    server.stop()


@pytest.fixture
def gha_env(tmp_path: Path, broker: FakeBroker) -> dict[str, str]:
    """A simulated GitHub Actions job environment."""
    workspace = tmp_path / "workspace"
    runner_temp = tmp_path / "runner_temp"
    files = tmp_path / "file_commands"
    for d in (workspace, runner_temp, files):
        d.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "GITHUB_ACTIONS": "true",
        "GITHUB_RUN_ID": "123456",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_JOB": "deploy",
        "GITHUB_WORKSPACE": str(workspace),
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_ENV": str(files / "env"),
        "GITHUB_OUTPUT": str(files / "output"),
        "GITHUB_STATE": str(files / "state"),
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{broker.url}/oidc?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
    }
    for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STATE"):
        Path(env[name]).touch()
    return env


class Sleeps(list):  # type: ignore[type-arg]
    """A sleep() that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_ctx(env: dict[str, str], sleeps: Sleeps | None = None, *, split: bool = False) -> Context:
    """A Context writing stdout and stderr into ONE buffer (so the order of lines across
    the two streams is visible), unless split=True."""
    out = io.StringIO()
    err = io.StringIO() if split else out
    return Context(environ=env, out=out, err=err, sleep=sleeps if sleeps is not None else Sleeps())


@pytest.fixture
def ctx_factory():  # type: ignore[no-untyped-def]
    return make_ctx
