"""Map a verified workload token to exactly one identity of the inventory.

Rules compare claim values exactly, or against an anchored glob compiled once at load
(broker/policy/patterns.py). The configuration refuses rules that could overlap, so at most
one identity can match. Rules see the issuer profile's attributes (VerifiedSubject), which
for most profiles are the claims themselves. A miss reports the *names* of the claims that
differed in the nearest rule (the caller may see them); the expected values go only to the
audit log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.domain.models import Config, Identity, MatchRule
from broker.policy.patterns import ValuePattern, compile_value


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


_Compiled = tuple[Identity, MatchRule, tuple[tuple[str, ValuePattern], ...]]


class IdentityMatcher:
    def __init__(self, config: Config) -> None:
        self._by_issuer: dict[str, list[_Compiled]] = {}
        for identity in config.identities:
            for rule in identity.rules:
                compiled = tuple((name, compile_value(want)) for name, want in rule.claims)
                self._by_issuer.setdefault(rule.issuer_id, []).append((identity, rule, compiled))

    def match(self, issuer_id: str, claims: Mapping[str, Any]) -> Match | Miss:
        nearest: tuple[int, MatchRule, list[str]] | None = None
        for identity, rule, compiled in self._by_issuer.get(issuer_id, ()):
            missed = [
                name for name, want in compiled if not want.matches(claim_text(claims.get(name)))
            ]
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
