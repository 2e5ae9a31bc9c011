"""Downstream hops: a resource server calling its upstream for the caller, without passthrough.

An MCP server receives an agent's token addressed to itself. To call an upstream API for the
agent it must not forward that token (the upstream would accept a token not addressed to it,
and could replay it at the MCP server). It exchanges it instead (RFC 8693 §2.1): the agent's
token as `subject_token`, its own workload token as `actor_token`. The parent's audience is
the MCP server itself, so "audiences only narrow" would leave the hop nowhere to go; the
upstream is a new audience.

The rule: when the parent grant is addressed ONLY to resources the actor declares it serves
(`delegation.serves`), the hop may also be addressed to the actor's own allowed audiences.
Everything else still narrows: scopes within the parent's and the actor's allowance,
lifetime within the parent's, depth, `may_act`, the root task (policy/delegation.py). So the
upstream call can do nothing the agent was not granted for this task, and it carries `act`:
the upstream sees who calls for whom."""

from __future__ import annotations

from broker.domain.models import Grant, Identity


def hop_audiences(actor: Identity, parent: Grant) -> tuple[str, ...]:
    """The audiences a hop may be addressed to, before the actor's allowance is applied."""
    served = actor.delegation.serves if actor.delegation is not None else ()
    if served and parent.audiences and set(parent.audiences) <= set(served):
        downstream = tuple(a for a in actor.allow.audiences if a not in parent.audiences)
        return parent.audiences + downstream
    return parent.audiences
