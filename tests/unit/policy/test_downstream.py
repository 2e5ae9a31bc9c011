"""Downstream hops (policy/downstream.py): an MCP server exchanging an agent's token addressed
to itself for a token addressed to its upstream; scopes and lifetime still only narrow."""

from __future__ import annotations

from dataclasses import replace

import pytest
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
from broker.errors import InvalidScope, InvalidTarget
from broker.policy.delegation import evaluate_hop
from broker.policy.downstream import hop_audiences

NOW = 1_800_000_000
MCP_A = "http://127.0.0.1:8001/mcp"
MCP_B = "http://127.0.0.1:8002/mcp"
UPSTREAM = "https://archive.acme.example"
BROKER = BrokerOptions(issuer="https://errand.test")
RULES = BUILTIN_IDENTITY_TYPES["agent"]

PARENT = Grant(
    jti="agent-grant",
    identity_id="notes-agent",
    identity_type="agent",
    owner="notes-team",
    task_id="t",
    audiences=(MCP_A,),
    scopes=("notes:read", "archive:write"),
    iat=NOW - 10,
    exp=NOW + 300,
    client_id="notes-agent",
    issuer_id="agent:notes-agent",
    epoch=1,
)


def server(
    serves: tuple[str, ...] = (MCP_A,), audiences: tuple[str, ...] = (UPSTREAM,)
) -> Identity:
    return Identity(
        id="notes-server-a",
        type="agent",
        owner="notes-team",
        purpose="the notes MCP server",
        expires=None,
        rules=(),
        allow=Allowance(audiences, ("archive:write", "archive:delete"), (), 600),
        delegation=DelegationPolicy(act_for=("notes-agent",), serves=serves),
    )


def hop(
    actor: Identity,
    audiences: tuple[str, ...],
    scopes: tuple[str, ...] | None,
    parent: Grant = PARENT,
):
    req = ExchangeRequest(
        subject_token="x",
        subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        audiences=audiences,
        scopes=scopes,
        actor_token="y",
    )
    return evaluate_hop(actor, parent, req, BROKER, RULES, NOW)


def test_the_server_a_token_was_addressed_to_reaches_its_upstream() -> None:
    decision = hop(server(), (UPSTREAM,), ("archive:write",))
    assert decision.audiences == (UPSTREAM,) and decision.scopes == ("archive:write",)
    assert decision.ttl_seconds <= 300  # never past the agent's token


def test_scopes_still_only_narrow() -> None:
    """archive:delete is in the server's allowance, not in what the agent was granted."""
    with pytest.raises(InvalidScope):
        hop(server(), (UPSTREAM,), ("archive:delete",))


@pytest.mark.parametrize(
    ("actor", "parent"),
    [
        (server(serves=()), PARENT),  # an actor that serves nothing: audiences only narrow
        (server(serves=(MCP_B,)), PARENT),  # the token was addressed to another server
        (server(), replace(PARENT, audiences=(MCP_A, MCP_B))),  # not addressed to it alone
    ],
)
def test_no_downstream_unless_the_token_was_addressed_to_the_actor_alone(
    actor: Identity, parent: Grant
) -> None:
    assert UPSTREAM not in hop_audiences(actor, parent)
    with pytest.raises(InvalidTarget):
        hop(actor, (UPSTREAM,), ("archive:write",), parent)


@settings(max_examples=40)
@given(
    asked=st.lists(
        st.sampled_from([MCP_A, MCP_B, UPSTREAM, "https://other.example"]), min_size=1, unique=True
    ),
    allowed=st.lists(st.sampled_from([UPSTREAM, MCP_B, "https://other.example"]), unique=True),
)
def test_a_downstream_hop_goes_only_where_the_actor_may(
    asked: list[str], allowed: list[str]
) -> None:
    actor = server(audiences=tuple(allowed))
    try:
        decision = hop(actor, tuple(asked), ("archive:write",))
    except InvalidTarget:
        return
    assert set(decision.audiences) <= set(allowed)
