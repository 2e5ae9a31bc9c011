"""docs/agents.md stays pasteable: every command its walkthrough shows parses with the real
argument parser (the broker's CLI, the example MCP server, agent and demo configuration),
every environment variable it sets is documented, every repository file it names exists,
every YAML block uses only keys the configuration schema knows, every Python block compiles
and imports only what exists, and its links and anchors resolve."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from marshmallow import Schema, fields

from broker.cli import build_parser as errand_parser
from broker.config import ConfigSchema
from broker.config.schema import IdentitySchema
from examples.mcp_server import __main__ as server_main
from examples.mcp_server import agent, demo_config

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "docs" / "agents.md"
TEXT = AGENTS.read_text()

PARSERS = {
    "examples.mcp_server": server_main.build_parser,
    "examples.mcp_server.agent": agent.build_parser,
    "examples.mcp_server.demo_config": demo_config.build_parser,
}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", TEXT, flags=re.S | re.M)


def _commands() -> Iterator[str]:
    """Each shell command of the page, continuation lines joined, comments dropped."""
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                yield line


def _argv(command: str) -> list[str]:
    # Command substitutions become one placeholder argument; the test checks them on their own.
    return shlex.split(re.sub(r"\"?\$\([^)]*\)\"?", "X", command))


def _errand_calls() -> Iterator[list[str]]:
    for command in _commands():
        for inner in re.findall(r"\$\((\.venv/bin/errand [^)]*)\)", command):
            yield _argv(inner)[1:]
        argv = _argv(command)
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
            argv = argv[1:]  # VAR=value prefixes
        if argv and argv[0] == ".venv/bin/errand":
            yield argv[1:]


def test_the_walkthrough_shows_each_step() -> None:
    commands = list(_commands())
    modules = [c for c in commands if " -m examples.mcp_server" in c]
    assert any("--dpop require" in c for c in modules), "a server that requires DPoP"
    assert any(c.endswith("--dpop") for c in modules), "an agent run with DPoP"
    assert any(c.startswith("ERRAND_CONFIG=") and c.endswith("errand run") for c in commands)


def test_every_example_command_parses() -> None:
    seen = set()
    for command in _commands():
        argv = _argv(command)
        if argv[:2] != [".venv/bin/python", "-m"]:
            continue
        module, args = argv[2], argv[3:]
        assert module in PARSERS, f"docs/agents.md runs an unknown module: {module}"
        try:
            PARSERS[module]().parse_args(args)
        except SystemExit:
            pytest.fail(f"docs/agents.md: the flags do not parse: {command}")
        seen.add(module)
    assert seen == set(PARSERS)


def test_every_errand_command_parses() -> None:
    calls = list(_errand_calls())
    assert ["run"] in calls and any(c[0] == "dev-token" for c in calls)
    for argv in calls:
        try:
            errand_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/agents.md: `errand {' '.join(argv)}` does not parse")
    inline = re.findall(r"`(?:\.venv/bin/)?errand ([a-z][a-z-]*)", TEXT)
    choices = next(a for a in errand_parser()._actions if a.dest == "command").choices
    assert set(inline) <= set(choices), set(inline) - set(choices)


def test_environment_variables_are_documented() -> None:
    config_doc = (ROOT / "docs" / "configuration.md").read_text()
    for command in _commands():
        for name in re.findall(r"(?:^|\s)((?:ERRAND|REDIS)_[A-Z0-9_]+)=", command):
            assert f"`{name}`" in config_doc, f"{name} is not in docs/configuration.md"


def test_named_repository_files_exist() -> None:
    named = set(re.findall(r"\b((?:examples|tests|config|scripts|broker|errand_rs|errand_client)/"
                           r"[\w./-]*\w\.(?:py|yaml|md))\b", TEXT))  # fmt: skip
    assert "examples/mcp_server/agent.py" in named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/agents.md names files that do not exist: {missing}"


def _unknown_keys(doc: Any, schema: Schema, path: str = "") -> Iterator[str]:
    if not isinstance(doc, dict):
        return
    for key, value in doc.items():
        field = schema.fields.get(key)
        if field is None:
            yield path + str(key)
            continue
        yield from _unknown_in_field(value, field, f"{path}{key}.")


def _unknown_in_field(value: Any, field: fields.Field, path: str) -> Iterator[str]:
    if isinstance(field, fields.Nested):
        yield from _unknown_keys(value, field.schema, path)
    elif isinstance(field, fields.List) and isinstance(value, list):
        for item in value:
            yield from _unknown_in_field(item, field.inner, path)
    elif (
        isinstance(field, fields.Dict) and field.value_field is not None and isinstance(value, dict)
    ):
        for item in value.values():
            yield from _unknown_in_field(item, field.value_field, path)


def test_yaml_blocks_use_only_known_keys() -> None:
    blocks = _blocks("yaml")
    assert len(blocks) >= 3
    for block in blocks:
        doc = yaml.safe_load(block.replace("...", "x"))
        if isinstance(doc, list):  # identities
            unknown = [k for item in doc for k in _unknown_keys(item, IdentitySchema())]
        else:
            unknown = list(_unknown_keys(doc, ConfigSchema()))
        assert not unknown, f"docs/agents.md: unknown configuration keys {unknown}"


def test_python_blocks_compile_and_import_what_exists() -> None:
    blocks = _blocks("python")
    assert blocks
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_and_anchors_resolve() -> None:
    text = re.sub(r"```.*?```", "", TEXT, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (AGENTS.parent / file_part).resolve() if file_part else AGENTS
        assert linked.exists(), f"agents.md: broken link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"agents.md: no heading for #{anchor} in {linked}"


def test_argparse_parsers_are_real() -> None:
    for build in PARSERS.values():
        assert isinstance(build(), argparse.ArgumentParser)
