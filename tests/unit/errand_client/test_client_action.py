"""The GitHub Action: action.yml, and its main and post steps run as processes in a
simulated runner (tmp GITHUB_ENV/GITHUB_OUTPUT/GITHUB_STATE, RUNNER_TEMP, a fake
ACTIONS_ID_TOKEN_REQUEST_URL service on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from errand_client.runner import read_github_file

ROOT = Path(__file__).resolve().parents[3]
MAIN = ROOT / "action" / "main.py"
POST = ROOT / "action" / "post.py"
AUD = "https://deploy.acme.example"
# Each step is a new Python process (about a second): `make test` runs these, test-fast not.
RUNS_STEPS = pytest.mark.slow


def inputs(broker, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    values = {
        "INPUT_URL": broker.url,
        "INPUT_OIDC-AUDIENCE": "errand-ci",
        "INPUT_AUDIENCE": AUD,
        "INPUT_SCOPE": "deploy:read deploy:write",
        "INPUT_TASK-ID": "",
        "INPUT_PURPOSE": "deploy from CI",
        "INPUT_LIFETIME": "",
        "INPUT_ENV-NAME": "ERRAND_TOKEN",
    }
    values.update(extra)
    return values


def step(script: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run a step like the runner does; stdout and stderr interleaved as the log shows them."""
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout


def post_env(gha_env: dict[str, str]) -> dict[str, str]:
    """GitHub gives the post step the main step's $GITHUB_STATE as STATE_* variables."""
    state = read_github_file(gha_env["GITHUB_STATE"])
    return {**gha_env, **{f"STATE_{k}": v for k, v in state.items()}}


def test_action_yml() -> None:
    spec = yaml.safe_load((ROOT / "action.yml").read_text())
    runs = spec["runs"]
    assert runs["using"] == "docker" and runs["image"] == "action.Dockerfile"
    assert runs["post-if"] == "always()"
    dockerfile = (ROOT / "action.Dockerfile").read_text()
    for key in ("entrypoint", "post-entrypoint"):
        assert runs[key].startswith("/opt/errand/action/")
        assert "COPY action/main.py action/post.py /opt/errand/action/" in dockerfile
    assert set(spec["inputs"]) >= {
        "url",
        "audience",
        "scope",
        "task-id",
        "purpose",
        "lifetime",
        "oidc-audience",
    }
    assert "task-id" in spec["outputs"]
    main_text = MAIN.read_text()
    for name in spec["inputs"]:
        assert f'"{name}"' in main_text, name  # every input is read by main.py


def test_action_image_copies_the_client_from_the_repository() -> None:
    """The image is built from the repository root, so it ships the one errand_client/."""
    dockerfile = (ROOT / "action.Dockerfile").read_text()
    assert "COPY errand_client/ /opt/errand/errand_client/" in dockerfile
    assert "image: action.Dockerfile" in (ROOT / "action.yml").read_text()
    assert not (ROOT / "action" / "errand_client").exists()


@RUNS_STEPS
def test_main_then_post(broker, gha_env) -> None:
    env = {**gha_env, **inputs(broker)}
    code, log = step(MAIN, env)
    assert code == 0, log
    token = broker.issued[-1]
    lines = log.splitlines()
    assert lines[0] == f"::add-mask::{token}"
    assert sum(token in line for line in lines) == 1  # nowhere but the mask command
    assert read_github_file(gha_env["GITHUB_ENV"]) == {"ERRAND_TOKEN": token}
    task_id = read_github_file(gha_env["GITHUB_OUTPUT"])["task-id"]
    state = read_github_file(gha_env["GITHUB_STATE"])
    assert state == {"url": broker.url, "task_id": task_id, "token": token}
    form = broker.token_requests[0]
    assert form["scope"] == ["deploy:read deploy:write"] and form["purpose"] == ["deploy from CI"]
    assert list(Path(gha_env["GITHUB_WORKSPACE"]).iterdir()) == []  # nothing in the workspace

    code, log = step(POST, post_env(gha_env))
    assert code == 0, log
    assert broker.complete_requests == [f"Bearer {token}"]
    assert "task completed" in log and token not in log.replace(f"::add-mask::{token}", "")


@RUNS_STEPS
def test_post_completes_when_main_failed_after_issuing(broker, gha_env) -> None:
    # The token was issued and saved to state, then exporting it failed: main fails (and
    # completes the task itself); the post step still runs and finds the task done.
    os.unlink(gha_env["GITHUB_ENV"])
    os.mkdir(gha_env["GITHUB_ENV"])
    code, log = step(MAIN, {**gha_env, **inputs(broker)})
    assert code == 2, log
    token = broker.issued[-1]
    assert read_github_file(gha_env["GITHUB_STATE"])["token"] == token
    broker.complete_script = [(401, {"error": "invalid_token", "error_description": "gone"}, {})]
    code, log = step(POST, post_env(gha_env))
    assert code == 0, log
    assert broker.complete_requests == [f"Bearer {token}", f"Bearer {token}"]


@RUNS_STEPS
def test_post_completes_after_a_failed_or_cancelled_job(broker, gha_env) -> None:
    code, _ = step(MAIN, {**gha_env, **inputs(broker)})
    assert code == 0
    # later steps fail, or the run is cancelled: `post-if: always()` still runs the post step
    code, log = step(POST, post_env(gha_env))
    assert (
        code == 0
        and "task completed" in log
        and broker.complete_requests == [f"Bearer {broker.issued[-1]}"]
    )


@RUNS_STEPS
def test_post_without_state_does_nothing(broker, gha_env) -> None:
    broker.token_script = [
        (400, {"error": "invalid_target", "error_description": "not allowed"}, {})
    ]
    code, log = step(MAIN, {**gha_env, **inputs(broker)})
    assert code == 2 and "invalid_target: not allowed" in log
    assert read_github_file(gha_env["GITHUB_STATE"]) == {}
    code, log = step(POST, post_env(gha_env))
    assert code == 0 and "nothing to complete" in log and broker.complete_requests == []


@RUNS_STEPS
def test_post_fails_visibly_when_completion_fails(broker, gha_env) -> None:
    step(MAIN, {**gha_env, **inputs(broker)})
    broker.complete_script = [(500, {"error": "server_error", "error_description": "x"}, {})]
    code, log = step(POST, post_env(gha_env))
    assert code == 2 and "::error title=errand::could not complete the task" in log


@RUNS_STEPS
def test_missing_oidc_permission(broker, gha_env) -> None:
    del gha_env["ACTIONS_ID_TOKEN_REQUEST_URL"], gha_env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    code, log = step(MAIN, {**gha_env, **inputs(broker)})
    assert code == 2 and "id-token: write" in log and "fork" in log
    assert broker.token_requests == []
