"""Imports point down: the contracts in .importlinter hold (docs/architecture.md, "Layers").

`lint-imports` (import-linter, a dev dependency) checks every import, a function-local one
too. The plain-Python layers are also checked the way a process meets them: importing them
in a fresh interpreter loads no web framework, Redis client or metrics library."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each check runs a new Python process

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
# import-linter's console script, installed next to this interpreter by `make venv`.
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_hold() -> None:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev dependencies"
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(CONFIG), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"an import contract is broken:\n{result.stdout}{result.stderr}"


def test_the_contracts_are_there() -> None:
    """Deleting a contract is a decision for review, not a way to make the check above pass."""
    config = configparser.ConfigParser()
    config.read(CONFIG)
    assert config.getboolean("importlinter", "include_external_packages")
    contracts = {
        section.removeprefix("importlinter:contract:"): config[section]
        for section in config.sections()
        if section.startswith("importlinter:contract:")
    }
    layers = contracts["layers"]
    assert layers["type"] == "layers"
    order = " / ".join(" ".join(line.split()) for line in layers["layers"].strip().splitlines())
    assert order == "http | cli / domain / identity | policy | tokens"
    assert contracts["domain-models-at-the-bottom"]["source_modules"].split() == [
        "broker.domain.models"
    ]
    plain = contracts["domain-is-plain-python"]
    assert {"flask", "redis", "prometheus_client"} <= set(plain["forbidden_modules"].split())
    assert set(plain["source_modules"].split()) == {
        "broker.domain",
        "broker.identity",
        "broker.policy",
        "broker.tokens",
    }
    libraries = contracts["libraries-stand-alone"]
    assert set(libraries["source_modules"].split()) == {"errand_rs", "errand_client"}
    assert {"broker", "workers"} <= set(libraries["forbidden_modules"].split())
    assert contracts["broker-never-imports-workers"]["forbidden_modules"].split() == ["workers"]


@pytest.mark.parametrize(
    "module",
    [
        "broker.domain.models",
        "broker.domain.exchange",
        "broker.identity.verifier",
        "broker.policy.engine",
        "broker.tokens.keystore",
    ],
)
def test_plain_python_layers_load_no_web_framework(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "loaded = sorted({'flask', 'prometheus_client', 'redis', 'rq'} & set(sys.modules))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import {module} loaded {result.stdout.strip()}"


def test_resource_server_libraries_load_no_broker() -> None:
    code = (
        "import sys, errand_rs, errand_client\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'broker', 'workers', 'flask'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the libraries loaded {result.stdout.strip()}"
