"""load_config(): read the file, parse YAML that refuses duplicate keys, expand ${NAME}
variables in string values, then parse_config()."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from broker.config.parse import ConfigError, parse_config
from broker.domain.models import Config

_VAR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, variables: Mapping[str, str]) -> str:
    """Replace ${NAME} and ${NAME:-default}; an unset NAME without a default is an error."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if variables.get(name):
            return variables[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _VAR.sub(sub, text)
    if missing:
        raise ConfigError(
            "configuration refers to unset variables: " + ", ".join(sorted(set(missing)))
        )
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys: a repeated key silently replacing a rule is a trap."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: keys must be plain scalars")
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: Path, variables: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read configuration {path}: {err.strerror}") from err
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except ValueError as err:  # e.g. an impossible date such as 2027-13-01
        raise ConfigError(f"{path}: bad value: {err}") from err
    # Variables are expanded in string values after parsing, so comments are left alone and a
    # variable's value can never change the document's structure.
    raw = _expand_tree(raw, variables or {})
    return parse_config(raw, base_dir=path.resolve().parent)


def _expand_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return expand_vars(node, variables)
    if isinstance(node, list):
        return [_expand_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _expand_tree(value, variables) for key, value in node.items()}
    return node
