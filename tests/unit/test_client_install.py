"""`pip install errand` is the client side only: the wheel, installed into a fresh virtual
environment with its base dependencies (through constraints.txt), imports errand_client,
errand_rs and errand_jose and runs the CI commands, and brings none of the broker's
dependencies. `errand`'s broker commands then say, in one line, that they need the server
extra.

Slow (30-60 s): builds a wheel in an isolated build environment and installs it from the
package index. tests/unit/test_packaging.py checks the same split in pyproject.toml quickly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from (pyproject's packages.find, its readme).
SOURCES = (
    "pyproject.toml",
    "README.md",
    "broker",
    "workers",
    "errand_jose",
    "errand_rs",
    "errand_client",
)
SERVER_MODULES = ("flask", "gunicorn", "rq", "redis", "marshmallow", "prometheus_client")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _ok(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = _run(cmd, cwd)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) holding the wheel and its base dependencies
    only; returns its bin directory. The wheel is built from a copy of the sources, so the
    build leaves nothing (build/, *.egg-info) in the work tree."""
    tmp = tmp_path_factory.mktemp("client-install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp / "wheels"
    _ok([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], tmp)
    (wheel,) = wheels.glob("errand-*.whl")

    venv = tmp / "venv"
    _ok([sys.executable, "-m", "venv", str(venv)], tmp)
    bin_dir = venv / "bin"
    constraints = str(ROOT / "constraints.txt")
    _ok([str(bin_dir / "python"), "-m", "pip", "install", "-q", "-c", constraints, str(wheel)], tmp)
    return bin_dir


def test_the_client_libraries_import(client_venv: Path) -> None:
    python = str(client_venv / "python")
    done = _ok(
        [python, "-c", "import errand_client, errand_rs, errand_jose, sys; print(sys.prefix)"],
        client_venv,
    )
    # The venv's own copy, not the work tree's.
    assert Path(done.stdout.strip()) == client_venv.parent
    _ok([python, "-c", "from errand_client import ErrandClient, AgentKey"], client_venv)
    _ok([python, "-c", "from errand_rs import ErrandVerifier, RevocationFeed"], client_venv)


def test_python_m_errand_client_runs(client_venv: Path) -> None:
    python = str(client_venv / "python")
    done = _ok([python, "-m", "errand_client", "--help"], client_venv)
    assert "exchange" in done.stdout and "complete" in done.stdout
    _ok([python, "-m", "errand_client", "exchange", "--help"], client_venv)


def test_no_server_dependency_is_installed(client_venv: Path) -> None:
    python = str(client_venv / "python")
    probe = (
        "import importlib.util, sys; "
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    )
    done = _ok([python, "-c", probe, *SERVER_MODULES], client_venv)
    assert done.stdout.split() == [], f"the base install pulled in {done.stdout.strip()}"


def test_errand_names_the_server_extra_and_still_runs_the_ci_commands(client_venv: Path) -> None:
    errand = str(client_venv / "errand")
    done = _run([errand, "serve"], client_venv)
    assert done.returncode == 1
    assert done.stderr == "errand: the broker commands need 'pip install errand[server]'\n"
    assert "Traceback" not in done.stdout + done.stderr
    # exchange and complete need nothing from the server.
    done = _ok([errand, "exchange", "--help"], client_venv)
    assert "--audience-for-oidc" in done.stdout
