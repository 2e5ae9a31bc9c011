"""The token exchange: a verified workload identity in, a task-scoped access token out.

One path serves both ways a workload JWT arrives: the RFC 8693 `subject_token` and the
RFC 7523 jwt-bearer `assertion`. Only the error code for a bad subject differs:
`invalid_request` for token exchange (RFC 8693 §2.2.2), `invalid_grant` for jwt-bearer
(RFC 7523 §3.1).

    verify -> match -> preflight -> decide -> runtime policy -> mint -> write

Each step runs in a span of svc.tracer (exchange.verify_subject, .match_identity,
.preflight, .policy, .mint, .store, .audit): OpenTelemetry when an OTLP endpoint is
configured, a shared no-op otherwise (docs/observability.md).

Each step returns what the next one needs or raises. Every refusal is answered through one
table (domain/exchange_refusals.py) and recorded once with the request's ExchangeAudit,
which the steps complete as they go (domain/audit_event.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from broker.domain.audit_event import ExchangeAudit
from broker.domain.audit_shape import bounded_event
from broker.domain.decision import Asked, PolicyOutcome, runtime_decision
from broker.domain.delegation import exchange_delegated
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
from broker.domain.limits import identity_window
from broker.domain.models import (
    GRANT_TYPE_JWT_BEARER,
    TOKEN_TYPE_ACCESS_TOKEN,
    Config,
    ExchangeRequest,
    Grant,
    Identity,
    IssuedToken,
    MatchRule,
    VerifiedSubject,
)
from broker.domain.ports import (
    IdentityMatcher,
    PreflightState,
    Services,
    SigningKeys,
    SubjectVerifier,
    WriteRefused,
)
from broker.domain.task_exchange import cap_to_deadline, task_spec
from broker.domain.tasks import TaskSpec
from broker.errors import BrokerError
from broker.identity.errors import VerificationError
from broker.policy.delegation import check_may_act_request
from broker.policy.engine import Decision, check_type_requirements, evaluate
from broker.policy.matcher import Miss

# What a step may raise to refuse; anything else is a server error.
_REFUSALS = (BrokerError, Refused, WriteRefused, VerificationError)


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class _Caller:
    """Who is asking, once verified and matched."""

    subject: VerifiedSubject
    identity: Identity
    task_id: str

    @property
    def replay_jti(self) -> str | None:
        """The jti to spend: single-use issuers' tokens are good for one exchange."""
        single_use = self.subject.issuer.replay == "single-use" or self.subject.single_use
        return self.subject.jti if single_use else None


def exchange_token(
    req: ExchangeRequest, svc: Services, audit: ExchangeAudit | None = None
) -> IssuedToken:
    """Swap a verified workload identity for a short-lived, task-scoped token (RFC 8693 §2.1).

    The grant, its indexes, the replay entry and the audit record are written in one atomic
    step before the token is returned. `audit` is the request's event, opened by the HTTP
    edge; without one (a direct call) the exchange opens its own."""
    if req.actor_token is not None or req.subject_token_type == TOKEN_TYPE_ACCESS_TOKEN:
        # Delegation (domain/delegation.py): an actor_token, or one of our own tokens as the
        # subject, is never read as a plain subject.
        return exchange_delegated(req, svc, audit)
    audit = ExchangeAudit.of(req) if audit is None else audit
    now = svc.clock.now()
    # One snapshot of the inventory for the whole request: a reload swaps these between
    # requests (broker/reload.py), never under a request that has started.
    verifier, matcher, config = svc.verifier, svc.matcher, svc.config
    audit.begin(req)
    arrival = Arrival()
    span = svc.tracer.span  # one span per step; a no-op unless tracing is configured
    try:
        spec = task_spec(req, config, now)
        with span("exchange.verify_subject"):
            subject, epoch = verify(req, svc, verifier, arrival, now)
        audit.verified(subject)
        task_id = req.task_id or new_id("task_")
        audit.task(task_id)
        with span("exchange.match_identity"):
            identity, rule = match(matcher, subject)
        audit.matched(identity, rule)
        caller = _Caller(subject, identity, task_id)
        with span("exchange.preflight"):
            state = preflight(svc, caller)
        with span("exchange.policy"):
            decision = decide(req, config, caller, state, epoch, now)
            decision = cap_to_deadline(decision, spec, state, now)
            # Runtime policy, after the allowances (domain/decision.py): scope classes, the
            # compiled policy, human approval. One step; it raises what the caller is told.
            outcome = runtime_decision(
                svc,
                req,
                config,
                Asked(identity, subject.issuer.id, subject.claims, task_id),
                decision,
                now,
            )
        audit.policy(outcome.policies, outcome.approval_id)
        with span("exchange.mint"):
            grant, token = mint(req, caller, decision, epoch, now, svc.keyring, config, outcome)
        audit.issued(grant, now)
        claim_proof(svc.dpop_replay, req.dpop, config.dpop)  # last check before the write
        write(svc, config, caller, grant, audit, spec)
    except _REFUSALS as err:
        answer = error_for(req, err, audit.identity)
        end_refused(svc, audit, err, answer, arrival, now, recording=span("exchange.audit"))
    return IssuedToken(access_token=token, grant=grant, expires_in=decision.ttl_seconds)


def verify(
    req: ExchangeRequest,
    svc: Services,
    verifier: SubjectVerifier,
    arrival: Arrival,
    now: float,
) -> tuple[VerifiedSubject, int]:
    """The subject token's signature and claims, and the revoke-all epoch read once its
    issuer was known (domain/exchange_steps.py). Raises VerificationError."""
    return verify_arriving(
        req.subject_token,
        req.client_address,
        svc,
        verifier,
        arrival,
        now,
        # RFC 7523 §3: a jwt-bearer assertion may be addressed to the token endpoint URL;
        # token exchange keeps the issuer's configured audience.
        token_endpoint_audience=req.grant_type == GRANT_TYPE_JWT_BEARER,
    )


def match(matcher: IdentityMatcher, subject: VerifiedSubject) -> tuple[Identity, MatchRule]:
    """The one identity whose rule matches the verified claims (policy/matcher.py)."""
    found = matcher.match(subject.issuer.id, subject.match_attributes)
    if isinstance(found, Miss):
        raise Refused(
            "no_matching_identity",
            claims=found.claims,
            rule_id=found.rule_id,
            compared=found.compared,
        )
    return found.identity, found.rule


def preflight(svc: Services, caller: _Caller) -> PreflightState:
    """One round trip for everything the decision reads from Redis. Replay is read here and
    claimed only in the atomic grant write: a request refused later must not burn the
    caller's jti (no token, no state). The identity is verified now, so it is safe to count
    against its rate limit."""
    state = svc.store.preflight(
        issuer_id=caller.subject.issuer.id,
        jti=caller.replay_jti,
        task_id=caller.task_id,
        identity_id=caller.identity.id,
        rate_window_seconds=identity_window(svc),
    )
    check_preflight(svc, state, caller.identity.id, svc.clock.now())
    return state


def decide(
    req: ExchangeRequest,
    config: Config,
    caller: _Caller,
    state: PreflightState,
    epoch: int,
    now: float,
) -> Decision:
    """Whether this identity may have this token, and with which audiences, scopes and
    lifetime (policy/engine.py); then that no revoke-all cut happened since arrival."""
    identity = caller.identity
    check_identity(identity, caller.subject.issuer, state, now)
    rules = config.type_rules(identity.type)
    check_type_requirements(identity, req, rules)
    decision = evaluate(identity, req, config.broker, rules)
    check_dpop_required(req, rules, decision.audiences, config.dpop)
    check_may_act_request(req, config)
    if state.epoch != epoch:
        raise Refused("epoch_changed")
    return decision


def mint(
    req: ExchangeRequest,
    caller: _Caller,
    decision: Decision,
    epoch: int,
    now: float,
    keyring: SigningKeys,
    config: Config,
    outcome: PolicyOutcome | None = None,
) -> tuple[Grant, str]:
    """The grant (a random jti, the epoch as the request arrived: the write refuses if it
    has moved since) and its signed access token (tokens/mint.py, RFC 9068)."""
    grant = new_grant(
        req,
        caller.identity,
        task_id=caller.task_id,
        issuer_id=caller.subject.issuer.id,
        decision=decision,
        epoch=epoch,
        now=now,
        outcome=outcome,
        purpose=req.purpose or "",
    )
    return grant, sign(grant, keyring, config.broker.issuer)


def write(
    svc: Services,
    config: Config,
    caller: _Caller,
    grant: Grant,
    audit: ExchangeAudit,
    task: TaskSpec | None = None,
) -> None:
    """The atomic grant write (store/lua/save_grant.lua): the grant, its indexes, the replay
    entry and the issued event together, or nothing (WriteRefused says why). The script
    appended the event to the stream, so only the log line is left to write."""
    replay = replay_entry(caller.subject, caller.replay_jti, config.broker.clock_skew_seconds)
    with svc.tracer.span("exchange.store"):
        svc.store.save_grant(
            grant,
            replay=replay,
            audit=bounded_event(audit.event),
            now=grant.iat,
            quota=config.broker.limits.max_live_grants_per_identity,
            task=task,
        )
    with svc.tracer.span("exchange.audit"):
        audit.record(svc.audit, stored=True)
