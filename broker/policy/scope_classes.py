"""Scope classes: discovery, read, write and high-impact scopes, declared per audience.

Rules (docs/policy.md, "Scope classes"), checked after the allowances and before Cedar:
- a scope's class is the strongest class any requested audience declares for it;
- a requested audience that declares its scopes accepts only those (an undeclared scope
  there is refused: nobody said what it can do);
- a discovery token never carries read, write or high-impact power: mixing is refused;
- write and high-impact scopes need a task the caller named and a purpose."""

from __future__ import annotations

from collections.abc import Mapping

from broker.domain.models import SCOPE_CLASSES, AudienceSpec
from broker.errors import InvalidRequest, InvalidScope

_RANK = {name: rank for rank, name in enumerate(SCOPE_CLASSES)}
WRITE_CLASSES = frozenset({"write", "high_impact"})


def classify(
    audiences: tuple[str, ...], scopes: tuple[str, ...], declared: Mapping[str, AudienceSpec]
) -> dict[str, str]:
    """scope -> class ("" when no requested audience declares scopes). Raises InvalidScope
    (reason scope_class) for a scope a declaring audience does not list."""
    specs = [declared[a] for a in audiences if a in declared and declared[a].scope_classes]
    out: dict[str, str] = {}
    for scope in scopes:
        found = [s.scope_classes[scope] for s in specs if scope in s.scope_classes]
        if specs and len(found) < len(specs):
            raise InvalidScope(
                "a requested scope is not declared for this audience",
                reason="scope_class",
                details={"scope": scope[:128], "rule": "scope_class.undeclared"},
            )
        out[scope] = max(found, key=_RANK.__getitem__) if found else ""
    return out


def check_scope_classes(
    classes: Mapping[str, str], *, task_named: bool, purpose: str | None
) -> None:
    """Refuse a discovery token that carries more, and write power without task context."""
    present = set(classes.values()) - {""}
    if "discovery" in present and len(present) > 1:
        raise InvalidScope(
            "discovery scopes cannot be combined with read or write scopes: "
            "ask for a separate token",
            reason="scope_class",
            details={"rule": "scope_class.discovery_mixed", "classes": sorted(present)},
        )
    if present & WRITE_CLASSES and not (task_named and purpose):
        raise InvalidRequest(
            "write scopes need a named task and a purpose: send task_id and purpose",
            reason="scope_class",
            details={"rule": "scope_class.write_needs_task"},
        )
