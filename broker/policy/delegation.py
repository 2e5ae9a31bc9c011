"""Decide whether an actor may act for a subject, and what its hop of the chain may carry
(RFC 8693 §1.1 delegation, §4.1 `act`, §4.4 `may_act`).

A hop only narrows: its audiences and scopes are a subset of its parent grant's AND of the
actor's own allowance, its lifetime ends no later than the parent's. Nothing is silently
narrowed: an audience outside either is `invalid_target`, a scope outside either is
`invalid_scope` (RFC 8693 §2.2.2), as in policy/engine.py. The lifetime is the least of the
requested lifetime (else the type's default, else the broker's), what is left of the parent's,
the actor's allowance, its type's maximum and the broker's.

Who may act: the actor's inventory entry names the subjects it may act for (`delegation:
act_for`, identity ids or patterns); a chain never loops back through an identity already in
it; it is at most `broker.max_delegation_depth` actors deep (and at most the actor's own
`max_depth`); and a subject token that names who may act for it (`may_act`) admits only that
identity. A refusal's description never names the rule's expected values."""

from __future__ import annotations

from broker.domain.models import (
    BrokerOptions,
    Config,
    ExchangeRequest,
    Grant,
    Identity,
    IdentityTypeRules,
)
from broker.errors import InvalidRequest, InvalidScope, InvalidTarget
from broker.policy.downstream import hop_audiences
from broker.policy.engine import Decision, denied_scopes_description
from broker.policy.patterns import compile_value


def max_depth_for(actor: Identity, broker: BrokerOptions) -> int:
    """How deep a chain may be once this actor's hop is on it."""
    own = actor.delegation.max_depth if actor.delegation is not None else None
    return min(broker.max_delegation_depth, own or broker.max_delegation_depth)


def check_depth(parent_depth: int, broker: BrokerOptions) -> None:
    """Before any work on the actor: a chain at the broker's maximum takes no further hop."""
    if parent_depth + 1 > broker.max_delegation_depth:
        raise InvalidRequest(
            "subject_token: the delegation chain is at its maximum depth",
            reason="delegation_depth_exceeded",
            details={"depth": parent_depth, "max": broker.max_delegation_depth},
        )


def check_actor(actor: Identity, parent: Grant, broker: BrokerOptions) -> None:
    """The actor may act for the parent's subject at this depth, and is not in the chain."""
    subject = parent.subject_id
    details: dict[str, object] = {"actor": actor.id, "subject": subject}
    policy = actor.delegation
    if policy is None or not any(compile_value(p).matches(subject) for p in policy.act_for):
        raise InvalidRequest(
            "actor_token: the actor may not act for this subject",
            reason="actor_not_allowed",
            details={**details, "rule": "delegation.act_for"},
        )
    if actor.id == subject or actor.id in parent.actors:
        # A chain never loops: every hop adds a new party, so `act` names each one once.
        raise InvalidRequest(
            "actor_token: the actor is already part of this delegation chain",
            reason="actor_in_chain",
            details=details,
        )
    depth, limit = parent.depth + 1, max_depth_for(actor, broker)
    if depth > limit:
        raise InvalidRequest(
            "subject_token: the delegation chain is at its maximum depth for this actor",
            reason="delegation_depth_exceeded",
            details={**details, "depth": depth, "max": limit},
        )


def check_may_act(may_act: object, actor: Identity) -> None:
    """RFC 8693 §4.4: a subject token that names who may act for it admits that one only."""
    if may_act is None:
        return
    named = may_act.get("sub") if isinstance(may_act, dict) else None
    if named != actor.id:
        raise InvalidRequest(
            "subject_token: its may_act names another actor",
            reason="may_act_mismatch",
            details={"actor": actor.id},
        )


def check_may_act_request(req: ExchangeRequest, config: Config) -> None:
    """Errand's `may_act` parameter names an identity of the inventory."""
    if req.may_act is not None and config.identity(req.may_act) is None:
        raise InvalidRequest("may_act: no identity has that id", reason="unknown_may_act")


def evaluate_hop(
    actor: Identity,
    parent: Grant,
    req: ExchangeRequest,
    broker: BrokerOptions,
    rules: IdentityTypeRules,
    now: float,
) -> Decision:
    """What the hop carries: never more than the parent grant or the actor's allowance."""
    allow = actor.allow
    audiences = tuple(dict.fromkeys(req.audiences)) if req.audiences else parent.audiences
    reachable = hop_audiences(actor, parent)  # the parent's, or downstream of a served one
    widened = [a for a in audiences if a not in reachable]
    if widened:
        raise InvalidTarget(
            "audience not granted to the subject token: a delegation hop only narrows",
            reason="audience_widened",
            details={"requested": [a[:256] for a in widened], "rule": "subject_token.aud"},
        )
    outside = [
        a
        for a in audiences
        if a not in allow.audiences or (rules.audiences is not None and a not in rules.audiences)
    ]
    if outside:
        raise InvalidTarget(
            details={"requested": [a[:256] for a in outside], "rule": "actor allow.audiences"}
        )
    if rules.single_audience and len(audiences) > 1:
        raise InvalidTarget(
            f"{actor.type} tokens carry one audience: request one at a time",
            reason="single_audience" if req.audiences else "audience_required",
        )

    scopes = tuple(dict.fromkeys(req.scopes)) if req.scopes is not None else parent.scopes
    widened = [s for s in scopes if s not in parent.scopes]
    if widened:
        raise InvalidScope(
            "scope not granted to the subject token: a delegation hop only narrows",
            reason="scope_widened",
            details={"requested": [s[:128] for s in widened], "rule": "subject_token.scope"},
        )
    denied = [s for s in scopes if s not in allow.scopes]
    if denied:
        raise InvalidScope(
            denied_scopes_description(denied),
            details={"requested": [s[:128] for s in denied], "rule": "actor allow.scopes"},
        )

    left = parent.exp - int(now)
    ttl = min(
        req.requested_lifetime or rules.default_ttl_seconds or broker.default_token_ttl_seconds,
        left,
        allow.max_ttl_seconds,
        rules.max_ttl_seconds,
        broker.max_token_ttl_seconds,
    )
    if ttl <= 0:
        raise InvalidRequest("subject_token: the token has expired", reason="subject_inactive")
    return Decision(audiences=audiences, scopes=scopes, ttl_seconds=ttl)
