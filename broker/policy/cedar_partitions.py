"""Cedar policies partitioned by what their scope pins, so that a decision evaluates only
the policies that can match its (action, resource) and the unconstrained ones.

Cedar has no index: it evaluates every policy of a set, so a decision at 1,000 policies
costs milliseconds. Most policies name the scope (`action == Action::"payments:refund"`,
`action in [...]`) or the audience (`resource == Audience::"https://..."`) they are about.
At load each policy goes under the key its scope head pins:

    (action, audience)   both pinned      (action, *)   only the action
    (*, audience)        only the audience (*, *)        neither (or a shape not recognised)

and a request for (a, r) is evaluated against the policies under (a, r), (a, *), (*, r) and
(*, *): the only ones whose scope head can be true. A policy whose scope head is false is
neither satisfied nor evaluated further (Cedar checks the head before `when`/`unless`, so it
cannot err either), which is why the partitioned decision equals the unpartitioned one
(tests/property/test_policy_partitions.py checks it on generated policy sets).

`action in Action::"g"` and `resource in Audience::"x"` are equalities here: a decision
passes no action entities and audiences have no parents, so nothing is *in* anything else.
A shape this module does not recognise (`resource is Audience`, a slot) is treated as
unconstrained: kept in every partition, never dropped.

One compiled PolicySet per (action, audience) key actually asked for, built once per
loaded policy set (the first time that key is asked; the unconstrained one at load) and
kept for the life of the set; a reload builds new ones."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import cedarpy

Key = tuple[str | None, str | None]
ANY: Key = (None, None)


def _pinned(head: Mapping[str, Any], entity_type: str) -> tuple[str, ...] | None:
    """The ids a scope head (Cedar's JSON form of `action ...` / `resource ...`) pins, or
    None when it pins nothing this module can rely on."""
    op = head.get("op")
    if op not in ("==", "in", "is"):
        return None
    if op == "is":
        inner = head.get("in")
        if not isinstance(inner, Mapping) or head.get("entity_type") != entity_type:
            return None
        head = inner
    if "entities" in head:
        entities = head["entities"]
    elif "entity" in head:
        entities = [head["entity"]]
    else:  # a slot: templates are refused at load, but never guess
        return None
    ids: list[str] = []
    for entity in entities:
        if not isinstance(entity, Mapping) or entity.get("type") != entity_type:
            return None
        ids.append(str(entity.get("id")))
    return tuple(dict.fromkeys(ids)) or None


def policy_keys(policy: Mapping[str, Any]) -> list[Key]:
    """The partitions a policy (Cedar JSON form) belongs to."""
    actions = _pinned(policy.get("action") or {}, "Action")
    resources = _pinned(policy.get("resource") or {}, "Audience")
    return [(a, r) for a in (actions or (None,)) for r in (resources or (None,))]


class PartitionedSet:
    """A set of policies (id -> Cedar JSON form) and its compiled partitions."""

    def __init__(self, policies: Mapping[str, Any], *, partitioned: bool = True) -> None:
        self._policies = dict(policies)
        self._order = {pid: n for n, pid in enumerate(self._policies)}
        self._by_key: dict[Key, list[str]] = {}
        for pid, policy in self._policies.items():
            for key in policy_keys(policy) if partitioned else [ANY]:
                self._by_key.setdefault(key, []).append(pid)
        self._actions = frozenset(a for a, _ in self._by_key if a is not None)
        self._resources = frozenset(r for _, r in self._by_key if r is not None)
        self._compiled: dict[Key, cedarpy.PolicySet | None] = {}
        self._lock = threading.Lock()
        self.policy_set(ANY)  # compile the unconstrained partition (and check it) at load

    @property
    def partitions(self) -> int:
        return len(self._by_key)

    def key(self, action: str, resource: str) -> Key:
        """The partition key of a request: a value no policy pins counts as unpinned."""
        return (
            action if action in self._actions else None,
            resource if resource in self._resources else None,
        )

    def policy_set(self, key: Key) -> cedarpy.PolicySet | None:
        """The compiled policies that can match requests of this key; None when none can."""
        try:
            return self._compiled[key]
        except KeyError:
            pass
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = self._compile(key)
            return self._compiled[key]

    def _compile(self, key: Key) -> cedarpy.PolicySet | None:
        action, resource = key
        wanted: set[str] = set()
        for k in {key, (action, None), (None, resource), ANY}:
            wanted.update(self._by_key.get(k, ()))
        if not wanted:
            return None
        ids = sorted(wanted, key=self._order.__getitem__)
        doc = {
            "staticPolicies": {pid: self._policies[pid] for pid in ids},
            "templates": {},
            "templateLinks": [],
        }
        return cedarpy.PolicySet.from_json_str(json.dumps(doc))


Outcome = tuple[bool, list[str], list[str]]  # allowed, reasons (policy ids), errors


def authorize(
    policies: PartitionedSet,
    principal: str,
    requests: Iterable[tuple[str, str, str]],
    entities: str,
) -> list[Outcome]:
    """Cedar's answer for each (action, resource, context JSON) request, in order, each
    evaluated against only its partition; one cedarpy call per partition asked."""
    asked = list(requests)
    groups: dict[Key, list[int]] = {}
    for n, (action, resource, _) in enumerate(asked):
        groups.setdefault(policies.key(action, resource), []).append(n)
    out: list[Outcome] = [(False, [], [])] * len(asked)
    for key, positions in groups.items():
        compiled = policies.policy_set(key)
        if compiled is None:  # no policy can match: Cedar's default deny, no reasons
            continue
        batch = [
            {
                "principal": {"type": "Identity", "id": principal},
                "action": {"type": "Action", "id": asked[n][0]},
                "resource": {"type": "Audience", "id": asked[n][1]},
                "context": asked[n][2],
            }
            for n in positions
        ]
        results = cedarpy.is_authorized_batch(batch, compiled, entities)
        for n, result in zip(positions, results, strict=True):
            diag = result.diagnostics
            out[n] = (result.allowed, list(diag.reasons), [str(e) for e in diag.errors])
    return out
