"""Story: a CI job against a REAL broker. `errand exchange` fetches a GitHub-Actions-shaped
OIDC token from a simulated runner token service on 127.0.0.1 (tokens minted by
broker.dev.issuer, which the e2e stack's configuration trusts), exports the Errand token, and
`errand complete` ends the task: introspection then says inactive. Also the Action's main
and post steps, and the Python library's task() with renewal, against the same broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.dev.issuer import github_claims
from errand_client import ErrandClient, TokenRequestError
from errand_client.runner import read_github_file
from tests.support.stack import AUDIENCE, DEPLOY_AUD, ERRAND, ROOT, introspect

pytestmark = pytest.mark.e2e

REQUEST_TOKEN = "simulated-actions-runtime-token"


class TokenService:
    """GitHub's ACTIONS_ID_TOKEN_REQUEST_URL, simulated: a fresh dev-issuer token per GET."""

    def __init__(self, dev_issuer: Any) -> None:
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                if self.headers.get("Authorization") != f"bearer {REQUEST_TOKEN}":
                    self.send_error(401)
                    return
                audience = query.get("audience", [""])[0]
                service.requests.append(audience)
                token = dev_issuer.mint(github_claims(issuer=dev_issuer.issuer, audience=audience))
                body = json.dumps({"value": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = (
            f"http://127.0.0.1:{self._server.server_address[1]}/token-request?api-version=2.0"
        )
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def token_service(dev_issuer: Any) -> Iterator[TokenService]:
    service = TokenService(dev_issuer)
    yield service
    service.stop()


@pytest.fixture
def runner(tmp_path: Path, token_service: TokenService) -> dict[str, str]:
    """The environment of a GitHub Actions job with `permissions: id-token: write`."""
    workspace, temp, files = tmp_path / "workspace", tmp_path / "runner_temp", tmp_path / "files"
    for d in (workspace, temp, files):
        d.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ERRAND_", "GITHUB_", "ACTIONS_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),  # errand_client from the checkout
        PYTHONUNBUFFERED="1",
        NO_PROXY="127.0.0.1,localhost",
        GITHUB_ACTIONS="true",
        GITHUB_RUN_ID="424242",
        GITHUB_JOB="deploy",
        GITHUB_WORKSPACE=str(workspace),
        RUNNER_TEMP=str(temp),
        GITHUB_ENV=str(files / "env"),
        GITHUB_OUTPUT=str(files / "output"),
        GITHUB_STATE=str(files / "state"),
        ACTIONS_ID_TOKEN_REQUEST_URL=token_service.url,
        ACTIONS_ID_TOKEN_REQUEST_TOKEN=REQUEST_TOKEN,
    )
    for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STATE"):
        Path(env[name]).touch()
    return env


def errand_command() -> list[str]:
    """`errand exchange` once broker/cli.py registers the CI commands; until then the same
    code through `python -m errand_client`."""
    probe = subprocess.run(
        [ERRAND, "exchange", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return [ERRAND] if probe.returncode == 0 else [sys.executable, "-m", "errand_client"]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=env["GITHUB_WORKSPACE"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )


def active(stack: Any, token: str) -> bool:
    resp = introspect(stack, token)
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


def test_errand_exchange_then_complete(
    stack: Any, runner: dict[str, str], token_service: TokenService
) -> None:
    errand = errand_command()
    out = run(
        [
            *errand,
            "exchange",
            "--url",
            stack.url,
            "--audience-for-oidc",
            AUDIENCE,
            "--audience",
            DEPLOY_AUD,
            "--scope",
            "deploy:write",
            "--purpose",
            "e2e deploy",
        ],
        runner,
    )
    assert out.returncode == 0, out.stdout
    token = read_github_file(runner["GITHUB_ENV"])["ERRAND_TOKEN"]
    lines = out.stdout.splitlines()
    assert lines[0] == f"::add-mask::{token}"
    assert sum(token in line for line in lines) == 1
    assert token_service.requests == [AUDIENCE]
    task_id = read_github_file(runner["GITHUB_OUTPUT"])["task-id"]

    info = introspect(stack, token).json()
    assert info["active"] is True
    assert info["task_id"] == task_id and info["scope"] == "deploy:write"

    done = run([*errand, "complete", "--url", stack.url], runner)
    assert done.returncode == 0, done.stdout
    assert "task completed" in done.stdout and token not in done.stdout
    assert active(stack, token) is False
    assert list(Path(runner["RUNNER_TEMP"]).rglob("*.json")) == []  # the state file is gone

    empty = Path(runner["RUNNER_TEMP"]) / "empty-token"
    empty.write_text("")
    again = run([*errand, "complete", "--token-file", str(empty)], runner)
    assert again.returncode == 2  # nothing readable in the file: a clear error
    runner["ERRAND_TOKEN"] = token
    again = run([*errand, "complete", "--url", stack.url], runner)
    # Completing again is harmless: today's broker answers 200 again (idempotent); the
    # documented 401 invalid_token is treated as "already complete" too. Either way: exit 0.
    assert again.returncode == 0, again.stdout
    assert active(stack, token) is False


def test_file_output_then_complete(stack: Any, runner: dict[str, str]) -> None:
    errand = errand_command()
    out = subprocess.run(
        [
            *errand,
            "exchange",
            "--url",
            stack.url,
            "--audience-for-oidc",
            AUDIENCE,
            "--audience",
            DEPLOY_AUD,
            "--output",
            "file",
        ],
        env=runner,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert Path(runner["RUNNER_TEMP"]) in path.parents
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    token = path.read_text().strip()
    assert active(stack, token) is True
    done = run([*errand, "complete", "--url", stack.url], runner)
    assert done.returncode == 0, done.stdout
    assert not path.exists()
    assert active(stack, token) is False


def test_denied_exchange_is_terminal(
    stack: Any, runner: dict[str, str], token_service: TokenService
) -> None:
    out = run(
        [
            *errand_command(),
            "exchange",
            "--url",
            stack.url,
            "--audience-for-oidc",
            AUDIENCE,
            "--audience",
            DEPLOY_AUD,
            "--scope",
            "admin:everything",
        ],
        runner,
    )
    assert out.returncode == 2, out.stdout
    assert "invalid_scope" in out.stdout
    assert len(token_service.requests) == 1  # no retry on a 4xx
    assert read_github_file(runner["GITHUB_ENV"]) == {}


def test_action_main_and_post(stack: Any, runner: dict[str, str]) -> None:
    inputs = {
        "INPUT_URL": stack.url,
        "INPUT_OIDC-AUDIENCE": AUDIENCE,
        "INPUT_AUDIENCE": DEPLOY_AUD,
        "INPUT_SCOPE": "deploy:read",
        "INPUT_PURPOSE": "e2e action",
        "INPUT_ENV-NAME": "ERRAND_TOKEN",
    }
    main = run([sys.executable, str(ROOT / "action" / "main.py")], {**runner, **inputs})
    assert main.returncode == 0, main.stdout
    token = read_github_file(runner["GITHUB_ENV"])["ERRAND_TOKEN"]
    assert active(stack, token) is True
    state = read_github_file(runner["GITHUB_STATE"])
    post_env = {**runner, **{f"STATE_{k}": v for k, v in state.items()}}
    post = run([sys.executable, str(ROOT / "action" / "post.py")], post_env)
    assert post.returncode == 0, post.stdout
    assert active(stack, token) is False


def test_library_task_renews_and_completes(stack: Any, dev_issuer: Any) -> None:
    def provider() -> str:
        return str(dev_issuer.mint(github_claims(issuer=dev_issuer.issuer, audience=AUDIENCE)))

    client = ErrandClient(stack.url, provider)
    client._session.trust_env = False
    with client.task(
        "e2e-library", audience=DEPLOY_AUD, scopes=["deploy:read"], lifetime=120
    ) as tok:
        first = tok.access_token
        assert tok.expires_in == 120
        tok.renew()  # what the margin does near expiry: a fresh subject token, the SAME task
        second = tok.access_token
        assert second != first
        a, b = introspect(stack, first).json(), introspect(stack, second).json()
        assert a["active"] and b["active"] and a["task_id"] == b["task_id"] == tok.task_id
    assert active(stack, first) is False and active(stack, second) is False


def test_a_subject_token_is_single_use(stack: Any, dev_issuer: Any) -> None:
    """Why every attempt needs a fresh OIDC token: the broker refuses a spent jti."""
    token = str(dev_issuer.mint(github_claims(issuer=dev_issuer.issuer, audience=AUDIENCE)))
    client = ErrandClient(stack.url, lambda: token)
    client._session.trust_env = False
    issued = client.exchange(audience=DEPLOY_AUD)
    with pytest.raises(TokenRequestError) as info:
        client.exchange(audience=DEPLOY_AUD)
    assert info.value.error == "invalid_request"
    assert client.complete(issued) is True
