"""The run-time states of an identity an operator (or the abuse detector) can set.

- **suspended**: no token is issued and the identity's live grants are revoked. Reversible.
- **offboarded**: suspended for good and dropped from the effective inventory.

The exchange only reads a state; broker/domain/inventory.py changes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SUSPENDED = "suspended"
OFFBOARDED = "offboarded"


def state_name(record: Mapping[str, Any]) -> str:
    """An identity state record names "offboarded"; anything else present is a suspension."""
    return OFFBOARDED if record.get("state") == OFFBOARDED else SUSPENDED
