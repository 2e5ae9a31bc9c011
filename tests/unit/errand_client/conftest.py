"""The fake broker (tests/support/fake_broker.py, also GitHub's token service) on 127.0.0.1,
plus a simulated runner environment (tmp GITHUB_ENV/GITHUB_OUTPUT/GITHUB_STATE, RUNNER_TEMP,
GITHUB_WORKSPACE). No external services, no Redis."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from errand_client.ci import Context
from tests.support.fake_broker import REQUEST_TOKEN, FakeBroker


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
