"""Delegation only narrows: a hop never gets a scope, an audience or a lifetime its parent
lacks, whatever it asks for, and a chain never grows past its depth limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.models import (
    BUILTIN_IDENTITY_TYPES,
    TOKEN_TYPE_ACCESS_TOKEN,
    Allowance,
    BrokerOptions,
    DelegationPolicy,
    ExchangeRequest,
    Grant,
    Identity,
)
from broker.errors import InvalidRequest, InvalidScope, InvalidTarget
from broker.policy.delegation import check_actor, check_depth, evaluate_hop

SETTINGS = settings(max_examples=150)
NOW = 1_800_000_000
POOL_AUD = [f"https://api{i}.example" for i in range(5)]
POOL_SCOPE = [f"s{i}" for i in range(6)]

subsets_aud = st.lists(st.sampled_from(POOL_AUD), min_size=1, max_size=5, unique=True)
subsets_scope = st.lists(st.sampled_from(POOL_SCOPE), max_size=6, unique=True)
actor_names = st.sampled_from(["a1", "a2", "a3", "a4", "a5", "a6"])


def parent_grant(
    audiences: list[str], scopes: list[str], left: int, actors: tuple[str, ...]
) -> Grant:
    return Grant(
        jti="parent",
        identity_id=actors[0] if actors else "root",
        identity_type="agent",
        owner="o",
        task_id="t",
        audiences=tuple(audiences),
        scopes=tuple(scopes),
        iat=NOW - 10,
        exp=NOW + left,
        client_id="root",
        issuer_id="i",
        epoch=1,
        subject="root" if actors else "",
        actors=actors,
        parent="p" if actors else "",
        ancestors=("p",) * len(actors),
    )


def actor(
    name: str, audiences: list[str], scopes: list[str], max_ttl: int, depth: int | None = None
) -> Identity:
    return Identity(
        id=name,
        type="agent",
        owner="o",
        purpose="p",
        expires=None,
        rules=(),
        allow=Allowance(tuple(audiences), tuple(scopes), (), max_ttl),
        delegation=DelegationPolicy(act_for=("root",), max_depth=depth),
    )


def request(
    audiences: list[str] | None, scopes: list[str] | None, lifetime: int | None
) -> ExchangeRequest:
    return ExchangeRequest(
        subject_token="x",
        subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        audiences=tuple(audiences or ()),
        scopes=tuple(scopes) if scopes is not None else None,
        requested_lifetime=lifetime,
        actor_token="y",
    )


@SETTINGS
@given(
    parent_aud=subsets_aud,
    parent_scope=subsets_scope,
    allow_aud=subsets_aud,
    allow_scope=subsets_scope,
    asked_aud=st.one_of(st.none(), subsets_aud),
    asked_scope=st.one_of(st.none(), subsets_scope),
    left=st.integers(min_value=1, max_value=4000),
    lifetime=st.one_of(st.none(), st.integers(min_value=1, max_value=100_000)),
    max_ttl=st.integers(min_value=1, max_value=4000),
)
def test_a_hop_never_exceeds_its_parent_or_its_actor(
    parent_aud,
    parent_scope,
    allow_aud,
    allow_scope,
    asked_aud,
    asked_scope,
    left,
    lifetime,
    max_ttl,
) -> None:
    parent = parent_grant(parent_aud, parent_scope, left, ())
    who = actor("a1", allow_aud, allow_scope, max_ttl)
    broker = BrokerOptions(issuer="https://errand.test")
    try:
        decision = evaluate_hop(
            who,
            parent,
            request(asked_aud, asked_scope, lifetime),
            broker,
            BUILTIN_IDENTITY_TYPES["agent"],
            NOW,
        )
    except (InvalidScope, InvalidTarget):
        # Refused only when the request (or, without one, the parent's own set) goes beyond
        # the parent or the actor: nothing is silently narrowed.
        wanted_aud = asked_aud or parent_aud
        wanted_scope = parent_scope if asked_scope is None else asked_scope
        assert not (
            set(wanted_aud) <= set(parent_aud) & set(allow_aud)
            and set(wanted_scope) <= set(parent_scope) & set(allow_scope)
        )
        return
    assert set(decision.audiences) <= set(parent.audiences) & set(allow_aud)
    assert set(decision.scopes) <= set(parent.scopes) & set(allow_scope)
    assert decision.ttl_seconds > 0 and NOW + decision.ttl_seconds <= parent.exp
    assert decision.ttl_seconds <= max_ttl
    if asked_aud:
        assert list(decision.audiences) == list(dict.fromkeys(asked_aud))  # exactly as asked
    if asked_scope is not None:
        assert list(decision.scopes) == list(dict.fromkeys(asked_scope))


@SETTINGS
@given(
    chain=st.lists(actor_names, max_size=6, unique=True),
    name=actor_names,
    broker_max=st.integers(min_value=1, max_value=5),
    own_max=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
)
def test_a_chain_never_grows_past_its_depth(chain, name, broker_max, own_max) -> None:
    broker = BrokerOptions(issuer="https://errand.test", max_delegation_depth=broker_max)
    parent = parent_grant(POOL_AUD, POOL_SCOPE, 100, tuple(chain))
    limit = min(broker_max, own_max or broker_max)
    try:
        check_depth(len(chain), broker)
        check_actor(actor(name, POOL_AUD, POOL_SCOPE, 600, own_max), parent, broker)
    except InvalidRequest as refused:
        assert refused.reason in ("delegation_depth_exceeded", "actor_in_chain")
        assert len(chain) + 1 > limit or name in chain
        return
    assert len(chain) + 1 <= limit and name not in chain
