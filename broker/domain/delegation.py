"""Delegation chains: an actor presents a subject's Errand token and its own workload token
(RFC 8693 §1.1, §2.1 `actor_token`) and gets a token that says so (§4.1 nested `act`).

    subject (our token, live grant) -> depth -> actor (workload JWT) -> match -> may act?
    -> preflight -> decide (narrow only) -> mint -> write under the parent

The subject_token is an access token Errand issued, of a live grant: the chain continues that
grant's task, so every hop belongs to the ROOT task and ending the task ends the chain. A
workload identity token is not accepted as the subject of a delegation: it names no task,
and handing one's own identity token to another party is the passthrough agents' tools must
not do; exchange it first, then delegate the Errand token. The actor_token is any workload
JWT Errand verifies (CI OIDC, SPIFFE JWT-SVID, Kubernetes service-account token, an agent's
own assertion), verified fully, with its issuer's replay policy; it may carry no `act` or
`may_act` itself. The hop's grant is the actor's (its quota, limits and suspension apply),
acts for the subject (the token's `sub`), and is written under its parent by
store/lua/save_hop.lua, which re-checks every link above atomically. Revoking a grant revokes
the hops below it (store/chains.py).

Refusals are answered and recorded like every exchange refusal (domain/exchange_refusals.py);
what concerns the actor token names `actor_token`, what concerns the chain `subject_token`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from broker.domain.access import read_our_token
from broker.domain.audit_event import ExchangeAudit
from broker.domain.audit_shape import bounded_event
from broker.domain.decision import Asked, PolicyOutcome, runtime_decision
from broker.domain.dpop import check_dpop_required, claim_proof
from broker.domain.exchange_refusals import Refused, error_for
from broker.domain.exchange_steps import (
    Arrival,
    check_identity,
    check_preflight,
    end_refused,
    new_grant,
    replay_entry,
    sign,
    verify_arriving,
)
from broker.domain.introspection import grant_state, is_live
from broker.domain.limits import identity_window
from broker.domain.models import (
    ExchangeRequest,
    Grant,
    Identity,
    IssuedToken,
    VerifiedSubject,
)
from broker.domain.ports import PreflightState, Services, WriteRefused
from broker.errors import BrokerError, InvalidRequest
from broker.identity.errors import KeysUnavailable, VerificationError
from broker.policy.delegation import (
    check_actor,
    check_depth,
    check_may_act,
    check_may_act_request,
    evaluate_hop,
)
from broker.policy.engine import Decision, check_type_requirements
from broker.policy.matcher import Miss

_REFUSALS = (BrokerError, Refused, WriteRefused, VerificationError)


@dataclass(frozen=True)
class _Hop:
    """What the request has established: the parent grant and the verified, matched actor."""

    parent: Grant
    parent_claims: dict[str, Any]
    actor: VerifiedSubject
    identity: Identity

    @property
    def replay_jti(self) -> str | None:
        return self.actor.jti if self.actor.issuer.replay == "single-use" else None


def _actor_says(message: str, **kw: Any) -> InvalidRequest:
    # RFC 8693 §2.2.2: an invalid or unacceptable actor_token is invalid_request.
    return InvalidRequest(f"actor_token: {message}", **kw)


# Refusals found by the preflight or the hop write that read differently for a hop than for
# a plain exchange; the rest are domain/exchange_refusals.py's.
_HOP_REFUSALS: dict[str, InvalidRequest] = {
    "replayed": _actor_says("the token has already been used", reason="replayed"),
    "identity_blocked": _actor_says("the matched identity is suspended", reason="identity_blocked"),
    "identity_suspended": _actor_says(
        "the matched identity is suspended", reason="identity_suspended"
    ),
    "identity_offboarded": _actor_says(
        "the matched identity is offboarded", reason="identity_offboarded"
    ),
    "subject_inactive": InvalidRequest(
        "subject_token: the token is no longer active", reason="subject_inactive"
    ),
    "subject_blocked": InvalidRequest(
        "subject_token: the identity it acts for is suspended", reason="subject_blocked"
    ),
}


def _error(req: ExchangeRequest, err: Exception, identity: str | None) -> BrokerError:
    reason = err.reason if isinstance(err, Refused | WriteRefused) else None
    known = _HOP_REFUSALS.get(reason or "")
    if known is not None:
        return type(known)(known.description, reason=known.reason)
    return error_for(req, err, identity)


def exchange_delegated(
    req: ExchangeRequest, svc: Services, audit: ExchangeAudit | None = None
) -> IssuedToken:
    """Issue a hop of a delegation chain (RFC 8693 §2.1 with `actor_token`).

    Called by domain/exchange.py for every request that carries an actor_token or names an
    access token as its subject: neither is ever read as a plain subject."""
    audit = ExchangeAudit.of(req) if audit is None else audit
    now = svc.clock.now()
    config = svc.config
    audit.begin(req)
    arrival = Arrival()
    try:
        parent_claims = verify_subject(req, svc)
        audit.delegating(str(parent_claims["sub"]), str(parent_claims["jti"]))
        check_depth(len(_actors_of(parent_claims)), config.broker)
        actor, epoch = verify_actor(req, svc, arrival, now)
        audit.actor(actor)
        identity = match_actor(svc, actor, audit)
        parent = live_parent(svc, parent_claims, now)
        if req.task_id is not None and req.task_id != parent.task_id:
            raise InvalidRequest(
                "task_id: a delegation hop belongs to its subject token's task",
                reason="task_mismatch",
            )
        if req.task_deadline is not None or req.task_labels:
            raise InvalidRequest(
                "task_deadline, task_label: a delegation hop joins its root's task as it is",
                reason="task_spec_on_hop",
            )
        audit.task(parent.task_id)
        hop = _Hop(parent, parent_claims, actor, identity)
        state = preflight(svc, hop, now)
        decision = decide(req, svc, hop, state, epoch, now)
        # The runtime policy decides on hops too, with the chain in its context
        # (domain/decision.py): a hop is never a way around it.
        outcome = runtime_decision(
            svc,
            req,
            config,
            Asked(
                identity,
                actor.issuer.id,
                actor.claims,
                parent.task_id,
                chain=(identity.id, *parent.actors),
            ),
            decision,
            now,
        )
        audit.policy(outcome.policies, outcome.approval_id)
        grant, token = mint(req, svc, hop, decision, epoch, now, outcome)
        audit.issued(grant, now)
        audit.chain(grant)
        claim_proof(svc.dpop_replay, req.dpop, config.dpop)  # last check before the write
        write(svc, hop, grant, audit)
    except _REFUSALS as err:
        end_refused(svc, audit, err, _error(req, err, audit.identity), arrival, now)
    return IssuedToken(access_token=token, grant=grant, expires_in=decision.ttl_seconds)


def _actors_of(claims: dict[str, Any]) -> list[str]:
    """The actors of a token we signed, newest first, from its nested `act`."""
    out: list[str] = []
    act = claims.get("act")
    while isinstance(act, dict) and len(out) <= 16:
        out.append(str(act.get("sub", "")))
        act = act.get("act")
    return out


def verify_subject(req: ExchangeRequest, svc: Services) -> dict[str, Any]:
    """The subject token is an access token we signed (tokens/verify.py) and has not
    expired; whether its grant is live is read later, with the other Redis reads."""
    if req.actor_token is None:
        raise InvalidRequest(
            "actor_token: required with an Errand access token as subject_token (delegation)",
            reason="actor_token_required",
        )
    claims = read_our_token(req.subject_token, svc)
    if claims is None:
        raise InvalidRequest(
            "subject_token: not an active access token issued by this broker",
            reason="subject_invalid",
        )
    return claims


def verify_actor(
    req: ExchangeRequest, svc: Services, arrival: Arrival, now: float
) -> tuple[VerifiedSubject, int]:
    """The actor token through the one workload-token verifier (identity/verifier.py),
    rate-limited and epoch-stamped as a subject token is (domain/exchange_steps.py)."""
    assert req.actor_token is not None  # verify_subject refused a request without one
    try:
        return verify_arriving(req.actor_token, req.client_address, svc, svc.verifier, arrival, now)
    except KeysUnavailable:
        raise  # the issuer's keys: retryable, answered as for a subject token
    except VerificationError as err:
        raise _actor_says(err.message, reason=err.reason, debug=err.debug) from err


def match_actor(svc: Services, actor: VerifiedSubject, audit: ExchangeAudit) -> Identity:
    found = svc.matcher.match(actor.issuer.id, actor.match_attributes)
    if isinstance(found, Miss):
        raise _actor_says(
            "no identity matches this token",
            reason="no_matching_identity",
            details={"nearest_rule": found.rule_id, "compared": dict(found.compared)},
        )
    audit.matched(found.identity, found.rule)
    return found.identity


def live_parent(svc: Services, claims: dict[str, Any], now: float) -> Grant:
    """The subject token's grant, live as introspection would say (the links above it are
    re-checked by the hop write)."""
    state = grant_state(claims, svc)
    if state.grant is None or not is_live(state, claims, now):
        raise Refused("subject_inactive")
    return state.grant


def preflight(svc: Services, hop: _Hop, now: float) -> PreflightState:
    """One round trip, as for a plain exchange: the actor token's replay entry, the task's
    tombstone and owner, the actor's state and rate. The task's owner must be the subject the
    chain acts for: the hop joins the root's task by delegation."""
    state = svc.store.preflight(
        issuer_id=hop.actor.issuer.id,
        jti=hop.replay_jti,
        task_id=hop.parent.task_id,
        identity_id=hop.identity.id,
        rate_window_seconds=identity_window(svc),
    )
    # Suspended, or past its deadline: save_hop.lua re-checks.
    check_preflight(svc, state, hop.parent.subject_id, now)
    return state


def decide(
    req: ExchangeRequest,
    svc: Services,
    hop: _Hop,
    state: PreflightState,
    epoch: int,
    now: float,
) -> Decision:
    """May this actor act for this subject, and with what (policy/delegation.py)."""
    config, identity = svc.config, hop.identity
    check_identity(identity, hop.actor.issuer, state, now)
    check_actor(identity, hop.parent, config.broker)
    check_may_act(hop.parent_claims.get("may_act"), identity)
    check_may_act_request(req, config)
    rules = config.type_rules(identity.type)
    # The task comes from the chain; a type that requires one has it.
    check_type_requirements(identity, _with_task(req, hop.parent.task_id), rules)
    decision = evaluate_hop(identity, hop.parent, req, config.broker, rules, now)
    check_dpop_required(req, rules, decision.audiences, config.dpop)
    if state.epoch != epoch:
        raise Refused("epoch_changed")
    return decision


def _with_task(req: ExchangeRequest, task_id: str) -> ExchangeRequest:
    return replace(req, task_id=task_id)


def mint(
    req: ExchangeRequest,
    svc: Services,
    hop: _Hop,
    decision: Decision,
    epoch: int,
    now: float,
    outcome: PolicyOutcome,
) -> tuple[Grant, str]:
    parent = hop.parent
    grant = new_grant(
        req,
        hop.identity,
        # The ROOT task's bucket (grant_ids.py): the chain's grants share one slot.
        task_id=parent.task_id,
        issuer_id=hop.actor.issuer.id,
        decision=decision,
        epoch=epoch,
        now=now,
        outcome=outcome,
        purpose=req.purpose or parent.purpose,
        subject=parent.subject_id,
        actors=(hop.identity.id, *parent.actors),
        parent=parent.jti,
        ancestors=(*parent.ancestors, parent.jti),
    )
    return grant, sign(grant, svc.keyring, svc.config.broker.issuer)


def write(svc: Services, hop: _Hop, grant: Grant, audit: ExchangeAudit) -> None:
    """The atomic hop write (store/lua/save_hop.lua), then the log line."""
    config = svc.config
    replay = replay_entry(hop.actor, hop.replay_jti, config.broker.clock_skew_seconds)
    svc.chains.save_hop(
        grant,
        replay=replay,
        audit=bounded_event(audit.event),
        now=grant.iat,
        quota=config.broker.limits.max_live_grants_per_identity,
    )
    audit.record(svc.audit, stored=True)
