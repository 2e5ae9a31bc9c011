"""parse_config(): a parsed YAML document to a Config, or ConfigError listing every problem
with its key path."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from broker.config.dpop import dpop_options_from
from broker.config.identities import identities_from, type_rules_from
from broker.config.issuers import issuers_from
from broker.config.runtime_policy import audiences_from, policy_from
from broker.config.schema import ConfigSchema
from broker.domain.models import BrokerOptions, Client, Config
from broker.errors import BrokerError


class ConfigError(BrokerError):
    """The configuration file is unusable; the message lists every problem with its key path."""


def parse_config(raw: Any, base_dir: Path = Path(".")) -> Config:
    """Validate a parsed YAML document and build the Config, or raise ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError("configuration: the top level must be a mapping")
    try:
        data = ConfigSchema().load(raw)
    except ValidationError as err:
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(_flatten(err.messages))
        ) from err

    errors: list[str] = []
    warnings: list[str] = []
    broker: BrokerOptions = data["broker"]
    issuers = issuers_from(data["issuers"], base_dir, errors, warnings)
    type_rules = type_rules_from(data["identity_types"], errors)
    identities, agent_issuers = identities_from(
        data["identities"], issuers, type_rules, broker, errors, warnings
    )

    clients: dict[str, Client] = {}
    for i, item in enumerate(data["clients"]):
        where = f"clients.{i}"
        if item["client_id"] in clients:
            errors.append(f"{where}.client_id: duplicate client id {item['client_id']!r}")
        if item["secret_sha256"]:
            digest = bytes.fromhex(item["secret_sha256"])
        else:
            digest = _read_secret_hash(item["secret_file"], base_dir, where, errors)
        clients[item["client_id"]] = Client(client_id=item["client_id"], secret_sha256=digest)

    dpop = dpop_options_from(data["dpop"], base_dir, errors)
    audiences = audiences_from(data["audiences"], errors)
    policy_options, runtime_policy = policy_from(
        data["policy"], base_dir, audiences, tuple(identities), errors
    )

    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return Config(
        broker=broker,
        issuers=issuers,
        identities=tuple(identities),
        clients=clients,
        identity_types=type_rules,
        agent_issuers=agent_issuers,
        warnings=tuple(warnings),
        dpop=dpop,
        audiences=audiences,
        policy_options=policy_options,
        runtime_policy=runtime_policy,
    )


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, Mapping):
        out: list[str] = []
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                path = prefix or "(top level)"
            out.extend(_flatten(value, path))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix}: {m}" for m in messages]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, prefix)]
    return [f"{prefix}: {messages}"]


def _read_secret_hash(path_text: str, base: Path, where: str, errors: list[str]) -> bytes:
    path = Path(path_text)
    if not path.is_absolute():
        path = base / path
    try:
        secret = path.read_text().strip()
    except OSError as err:
        errors.append(f"{where}.secret_file: cannot read {path}: {err.strerror}")
        return b""
    if len(secret) < 16:
        errors.append(f"{where}.secret_file: the secret must be at least 16 characters")
    return hashlib.sha256(secret.encode()).digest()
