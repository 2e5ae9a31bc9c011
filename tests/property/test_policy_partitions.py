"""The partitioned runtime policy (broker/policy/cedar_partitions.py) decides exactly as
Cedar evaluating every policy does: on generated policy sets whose scope heads pin actions
and audiences in every shape Cedar allows (or pin nothing), with conditions that can err,
forbids a person can lift, one or two tiers, and requests for several scopes and audiences,
the verdict (allow or deny, the class, the deciding policy ids, the detail) is the same."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.models import Allowance, AudienceSpec, Identity, PolicyRequest
from broker.policy.cedar_engine import from_texts
from broker.policy.cedar_partitions import policy_keys

AUDS = ("https://a.example", "https://b.example", "https://c.example")
SCOPES = ("s:read", "s:write", "s:pay")
CLASSES = {"s:read": "read", "s:write": "write", "s:pay": "high_impact"}
AUDIENCES = {a: AudienceSpec(id=a, scope_classes=CLASSES) for a in AUDS[:2]}
_ids = itertools.count()

ACTION_HEADS = [
    "action",
    'action == Action::"s:read"',
    'action == Action::"s:pay"',
    'action in [Action::"s:write", Action::"s:pay"]',
    'action in Action::"s:read"',
]
RESOURCE_HEADS = [
    "resource",
    f'resource == Audience::"{AUDS[0]}"',
    f'resource == Audience::"{AUDS[1]}"',
    f'resource in Audience::"{AUDS[0]}"',
    "resource is Audience",
    f'resource is Audience in Audience::"{AUDS[1]}"',
]
CONDITIONS = [
    "",
    'when { context.scope_class == "read" }',
    'when { principal.type == "agent" }',
    "when { context.dpop }",
    'when { principal.hasTag("team") && principal.getTag("team") == "pay" }',
    'when { principal.getTag("team") == "pay" }',  # errs when the token has no such claim
    'when { context.scope_class != "read" }',
    "unless { context.approved }",
    'when { resource.sensitivity == "high" }',
]


@st.composite
def policy(draw: Any) -> str:
    effect = draw(st.sampled_from(["permit", "forbid"]))
    note = '@approval("required")\n' if effect == "forbid" and draw(st.booleans()) else ""
    head = (
        f"principal, {draw(st.sampled_from(ACTION_HEADS))}, {draw(st.sampled_from(RESOURCE_HEADS))}"
    )
    condition = draw(st.sampled_from(CONDITIONS))
    return f'@id("p{next(_ids)}")\n{note}{effect} ({head}) {condition};\n'


policy_texts = st.lists(policy(), min_size=1, max_size=8).map("".join)
requests = st.fixed_dictionaries(
    {
        "scopes": st.lists(st.sampled_from(SCOPES), min_size=1, max_size=2, unique=True),
        "audiences": st.lists(st.sampled_from(AUDS), min_size=1, max_size=2, unique=True),
        "type": st.sampled_from(["agent", "service"]),
        "claims": st.sampled_from([{}, {"team": "pay"}, {"team": "ops"}]),
        "dpop": st.booleans(),
        "approved": st.booleans(),
    }
)


def policy_request(r: dict[str, Any]) -> PolicyRequest:
    identity = Identity(
        id="i-1",
        type=r["type"],
        owner="o",
        purpose="p",
        expires=None,
        rules=(),
        allow=Allowance(AUDS, SCOPES, (), 300),
    )
    return PolicyRequest(
        identity=identity,
        issuer_id="iss",
        claims=r["claims"],
        audiences=tuple(r["audiences"]),
        scopes=tuple(r["scopes"]),
        scope_classes={s: CLASSES[s] for s in r["scopes"]},
        purpose="ship",
        task_id="t",
        task_named=True,
        labels=(),
        now=1_700_000_000,
        dpop=r["dpop"],
        approved=r["approved"],
    )


def verdict_of(engine: Any, req: PolicyRequest) -> tuple[Any, ...]:
    v = engine.decide(req)
    return (v.allowed, v.deny_class, sorted(v.policies), v.detail)


@settings(max_examples=80, deadline=None)
@given(
    baseline=policy_texts,
    open_baseline=st.booleans(),
    team=st.one_of(st.none(), policy_texts),
    r=requests,
)
def test_partitioned_decision_equals_the_unpartitioned_one(
    baseline, open_baseline, team, r
) -> None:
    if open_baseline:  # often the baseline permits and only the team tier decides
        baseline += f'@id("p{next(_ids)}")\npermit (principal, action, resource);\n'
    req = policy_request(r)
    every = from_texts(baseline, team, AUDIENCES, partitioned=False)
    partitioned = from_texts(baseline, team, AUDIENCES)
    assert verdict_of(partitioned, req) == verdict_of(every, req)


def test_scope_heads_pin_what_they_name() -> None:
    def keys(head: str) -> list[Any]:
        import json

        import cedarpy

        est = json.loads(cedarpy.policies_to_json_str(f"permit ({head});"))
        return policy_keys(next(iter(est["staticPolicies"].values())))

    a, b = AUDS[0], AUDS[1]
    assert keys("principal, action, resource") == [(None, None)]
    assert keys(f'principal, action == Action::"x", resource == Audience::"{a}"') == [("x", a)]
    assert keys('principal, action in [Action::"x", Action::"y"], resource') == [
        ("x", None),
        ("y", None),
    ]
    assert keys(f'principal, action, resource is Audience in Audience::"{b}"') == [(None, b)]
    # Not recognised as a pin: kept everywhere.
    assert keys("principal, action, resource is Audience") == [(None, None)]
    assert keys('principal, action, resource == Identity::"x"') == [(None, None)]


def test_a_team_forbid_after_a_baseline_permit_is_the_team_tiers_denial() -> None:
    """The case one evaluation of both tiers cannot settle alone."""
    baseline = '@id("b")\npermit (principal, action, resource);\n'
    team = (
        '@id("t")\npermit (principal, action, resource);\n'
        '@id("f")\nforbid (principal, action == Action::"s:pay", resource);\n'
    )
    req = policy_request(
        {
            "scopes": ["s:read", "s:pay"],
            "audiences": [AUDS[0]],
            "type": "agent",
            "claims": {},
            "dpop": False,
            "approved": False,
        }
    )
    got = verdict_of(from_texts(baseline, team, AUDIENCES), req)
    assert got == verdict_of(from_texts(baseline, team, AUDIENCES, partitioned=False), req)
    assert got[:3] == (False, "policy_forbid", ["f"]) and got[3].startswith("team:")
