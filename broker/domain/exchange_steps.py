"""The steps a plain exchange (domain/exchange.py) and a delegation hop (domain/delegation.py)
take alike: verifying an arriving workload token with the revoke-all epoch read once its
issuer is known, the identity checks before the policy, the preflight's refusals, signing
the grant, the replay entry the write claims, and ending a refused request."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn

from broker.domain.audit_event import ExchangeAudit
from broker.domain.decision import PolicyOutcome
from broker.domain.exchange_refusals import Refused, record_refusal
from broker.domain.grant_ids import new_grant_id
from broker.domain.identity_state import state_name
from broker.domain.limits import check_before_signature, check_identity_rate
from broker.domain.models import (
    AGENT_PROFILE,
    ExchangeRequest,
    Grant,
    Identity,
    TrustedIssuer,
    VerifiedSubject,
)
from broker.domain.ports import PreflightState, Services, SigningKeys, SubjectVerifier
from broker.domain.task_exchange import check_task_state
from broker.errors import BrokerError, InvalidTarget
from broker.policy.engine import Decision, check_identity_usable, issuer_kind_mismatch
from broker.tokens.mint import TokenTooLarge, mint_access_token


@dataclass
class Arrival:
    """What the exchange learns once the token names a configured issuer, before any key
    fetch or signature work."""

    epoch: int | None = None  # the revoke-all epoch this exchange answers to
    address_counted: bool = False  # the client address was counted against its limit here


def verify_arriving(
    token: str,
    client_address: str,
    svc: Services,
    verifier: SubjectVerifier,
    arrival: Arrival,
    now: float,
    *,
    token_endpoint_audience: bool = False,
) -> tuple[VerifiedSubject, int]:
    """A workload token's signature and claims (identity/verifier.py), and the revoke-all
    epoch read once its issuer was known. Raises VerificationError."""

    def on_issuer(issuer: TrustedIssuer) -> None:
        # Rate-limited by the claimed issuer before any signature work, never by a claimed
        # identity (which a forger could exhaust for its victim); an agent's issuer is per
        # identity, so a forger must not drain its budget either.
        arrival.address_counted = True
        check_before_signature(
            svc, client_address, None if issuer.profile == AGENT_PROFILE else issuer.id
        )
        # Read before verification can wait on anything (an issuer's keys): the grant write
        # refuses if a revoke-all moved the epoch since (revoke-all is a cut).
        arrival.epoch = svc.store.current_epoch()

    subject = verifier.verify(
        token, now=now, on_issuer=on_issuer, token_endpoint_audience=token_endpoint_audience
    )
    if arrival.epoch is None:
        # A verifier that never reported the issuer: no epoch from before verification,
        # so no grant (one read now could be stamped after a revoke-all).
        raise BrokerError(debug="the verifier did not call on_issuer")
    return subject, arrival.epoch


def check_identity(
    identity: Identity, issuer: TrustedIssuer, state: PreflightState, now: float
) -> None:
    """The matched identity is of its issuer's kind, usable now and not suspended,
    blocked or offboarded (the preflight read its state)."""
    if issuer_kind_mismatch(identity, issuer):
        raise Refused(
            "identity_type_mismatch", identity=identity.id, type=identity.type, issuer=issuer.id
        )
    check_identity_usable(identity, now)
    if state.identity_state is not None:
        raise Refused(f"identity_{state_name(state.identity_state)}")


def check_preflight(svc: Services, state: PreflightState, task_owner: str, now: float) -> None:
    """The preflight's refusals: a spent jti, the identity's rate, a task owned by another
    than `task_owner`, a completed, suspended or overdue task (the write re-checks)."""
    if state.replayed:
        raise Refused("replayed")
    check_identity_rate(svc, state.identity_requests, state.identity_window_reset)
    if state.task_owner is not None and state.task_owner != task_owner:
        raise Refused("task_foreign")
    if state.task_completed:
        raise Refused("task_completed")
    check_task_state(state, now)


def new_grant(
    req: ExchangeRequest,
    identity: Identity,
    *,
    task_id: str,
    issuer_id: str,
    decision: Decision,
    epoch: int,
    now: float,
    outcome: PolicyOutcome | None,
    purpose: str,
    **chain: Any,
) -> Grant:
    """The grant of an exchange or a delegation hop: a random jti in its task's bucket
    (grant_ids.py), the epoch as the request arrived (the write refuses if it has moved
    since), what the decision and the runtime policy allowed; `chain` the hop's fields."""
    iat = int(now)
    return Grant(
        jti=new_grant_id(task_id),
        identity_id=identity.id,
        identity_type=identity.type,
        owner=identity.owner,
        task_id=task_id,
        audiences=decision.audiences,
        scopes=decision.scopes,
        iat=iat,
        exp=iat + decision.ttl_seconds,
        client_id=identity.id,
        issuer_id=issuer_id,
        epoch=epoch,
        purpose=purpose,
        dpop_jkt=req.dpop.jkt if req.dpop else None,
        approval_id=outcome.approval_id if outcome else "",
        contracts=outcome.contracts if outcome else (),
        may_act=req.may_act or "",  # RFC 8693 §4.4 (domain/delegation.py honours it)
        **chain,
    )


def sign(grant: Grant, keyring: SigningKeys, issuer: str) -> str:
    """The grant's signed access token (tokens/mint.py, RFC 9068)."""
    try:
        # tokens/ names KeyRing; any SigningKeys do
        return mint_access_token(grant, keyring, issuer)  # type: ignore[arg-type]
    except TokenTooLarge as err:
        raise InvalidTarget(
            "the requested audiences and scopes do not fit in one token; ask for fewer",
            reason="token_too_large",
            debug=str(err),
        ) from err


def replay_entry(
    subject: VerifiedSubject, jti: str | None, clock_skew_seconds: int
) -> tuple[str, str, int] | None:
    """What the write claims to spend a single-use token's jti: (issuer, jti, until)."""
    return (subject.issuer.id, jti, subject.exp + clock_skew_seconds) if jti else None


def end_refused(
    svc: Services,
    audit: ExchangeAudit,
    err: Exception,
    answer: BrokerError,
    arrival: Arrival,
    now: float,
    *,
    recording: AbstractContextManager[object] | None = None,
) -> NoReturn:
    """Record the refusal `answer` (the client's reading of `err`) once, inside `recording`
    (the exchange's audit span) if given, and raise what the client is told: `err` itself
    when that is the answer, else the answer caused by it."""
    with recording or nullcontext():
        refusal = record_refusal(
            svc, audit, answer, address_counted=arrival.address_counted, now=now
        )
    if refusal is err:
        raise err
    raise refusal from err
