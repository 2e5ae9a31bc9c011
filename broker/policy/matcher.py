"""Map a verified workload token to exactly one identity of the inventory.

Rules compare exact claim values. The configuration refuses overlapping rules, so at most
one identity can match. A miss reports the *names* of the claims that differed in the
nearest rule (the caller may see them); the expected values go only to the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.domain.models import Config, Identity, MatchRule


def claim_text(value: Any) -> str | None:
    """Claims compare as text; only strings and integers can match (never bools or lists)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


@dataclass(frozen=True)
class Match:
    identity: Identity
    rule: MatchRule


@dataclass(frozen=True)
class Miss:
    """No identity matched. `claims` are the claim names that differed in the nearest rule."""

    claims: tuple[str, ...]
    rule_id: str | None
    compared: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class IdentityMatcher:
    def __init__(self, config: Config) -> None:
        self._by_issuer: dict[str, list[tuple[Identity, MatchRule]]] = {}
        for identity in config.identities:
            for rule in identity.rules:
                self._by_issuer.setdefault(rule.issuer_id, []).append((identity, rule))

    def match(self, issuer_id: str, claims: Mapping[str, Any]) -> Match | Miss:
        nearest: tuple[int, MatchRule, list[str]] | None = None
        for identity, rule in self._by_issuer.get(issuer_id, ()):
            missed = [name for name, want in rule.claims if claim_text(claims.get(name)) != want]
            if not missed:
                return Match(identity=identity, rule=rule)
            if nearest is None or len(missed) < nearest[0]:
                nearest = (len(missed), rule, missed)
        if nearest is None:
            return Miss(claims=(), rule_id=None)
        _, rule, missed = nearest
        want = dict(rule.claims)
        compared = {
            name: {"expected": want[name], "actual": str(claims.get(name))[:256]} for name in missed
        }
        return Miss(claims=tuple(missed), rule_id=rule.id, compared=compared)
