"""Token introspection (RFC 7662).

`active: true` only for a token whose signature is ours, that has not expired, whose grant
is live in Redis, stamped with the current revocation epoch, and whose task is neither ended
(completed, failed, cancelled) nor suspended (docs/agents.md).
RFC 7662 §2.2: an inactive token reveals nothing else. If Redis cannot be read the caller
gets an error (StoreUnavailable -> 503), never `active: true`.

A completed task's token that is still being presented is audited, never counted against
its identity: whoever holds a dead token, or a resource server it is shown to, is not the
identity, and only the identity's own verified requests count toward its suspension."""

from __future__ import annotations

from typing import Any

from broker.domain.access import read_our_token
from broker.domain.limits import count_occurrence
from broker.domain.models import Grant, GrantState, act_claim
from broker.domain.ports import Services

INACTIVE: dict[str, Any] = {"active": False}


def grant_state(claims: dict[str, Any], svc: Services) -> GrantState:
    return svc.store.grant_state(claims["jti"], claims["task_id"])


def is_live(state: GrantState, claims: dict[str, Any], now: float) -> bool:
    """Live: the grant exists, carries the current epoch, has not expired, matches the token,
    and its task has not ended and is not suspended."""
    grant = state.grant
    return not (
        grant is None
        or state.task_completed
        or state.task_suspended
        or grant.epoch != state.current_epoch
        or grant.exp <= now
        or grant.task_id != claims["task_id"]
        or grant.subject_id != claims["sub"]
    )


def chain_live(grant: Grant, svc: Services) -> bool:
    """A delegation hop is live only while every grant above it is (domain/delegation.py):
    however an ancestor went, by revocation, bulk revocation or suspension, the hops below
    are inactive at once, before any clean-up reaches them."""
    return not grant.ancestors or svc.chains.links_live(grant.ancestors)


def _audit_used_after_completion(
    svc: Services, claims: dict[str, Any], context: dict[str, Any]
) -> None:
    """A sign of an agent acting on stale state. One stream entry per token per limits
    window, so a dead token replayed in a loop cannot churn the bounded stream; every
    occurrence is a log line carrying the count."""
    seen = count_occurrence(svc, "introspected", claims["jti"])
    event = {
        "ts": svc.clock.now(),
        "event": "token.introspected",
        "outcome": "inactive",
        "reason": "used_after_completion",
        "identity": claims["sub"],
        "task": claims["task_id"],
        "jti": claims["jti"],
        "seen": seen,
        **context,
    }
    svc.audit.record(event, stored=seen > 1)


def introspect(
    token: str,
    svc: Services,
    *,
    client_id: str | None = None,
    request_id: str = "",
    client_address: str = "",
) -> dict[str, Any]:
    claims = read_our_token(token, svc)
    if claims is None:
        return dict(INACTIVE)
    state = grant_state(claims, svc)
    grant = state.grant
    if grant is None or not is_live(state, claims, svc.clock.now()) or not chain_live(grant, svc):
        if state.task_completed:
            context = {
                "client_id": client_id,
                "request_id": request_id,
                "client_address": client_address,
            }
            _audit_used_after_completion(svc, claims, context)
        return dict(INACTIVE)
    body: dict[str, Any] = {
        "active": True,
        "iss": svc.config.broker.issuer,
        "sub": grant.subject_id,
        "aud": list(grant.audiences) if len(grant.audiences) != 1 else grant.audiences[0],
        "scope": " ".join(grant.scopes),
        "client_id": grant.client_id,
        "exp": grant.exp,
        "iat": grant.iat,
        "jti": grant.jti,
        "token_type": grant.token_type,
        "task_id": grant.task_id,
        "identity_type": grant.identity_type,
        "owner": grant.owner,
    }
    if grant.dpop_jkt:
        body["cnf"] = {"jkt": grant.dpop_jkt}  # RFC 9449 §6.2: the RS checks the proof's key
    act = act_claim(grant.actors)
    if act is not None:
        body["act"] = act  # RFC 8693 §4.1: who acts, prior actors nested inside
    if grant.may_act:
        body["may_act"] = {"sub": grant.may_act}
    return body
