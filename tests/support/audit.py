"""Audit HMACs in the test process as a running broker computes them (broker/audit_key.py):
tests that look an event up by its jti or token compare HMACs under the broker's key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.audit_key import resolve_audit_key
from broker.domain import audit_hmac
from broker.settings import load_settings


def use_broker_audit_key(env: Mapping[str, str], redis_client: Any) -> None:
    """Configure this process's audit key as the broker with `env` on `redis_client` has it."""
    audit_hmac.configure(resolve_audit_key(load_settings(dict(env)), redis_client))
