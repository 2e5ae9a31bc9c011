"""The token exchange: a verified workload identity in, a task-scoped access token out.

One path serves both ways a workload JWT arrives: the RFC 8693 `subject_token` and the
RFC 7523 jwt-bearer `assertion`. Only the error code for a bad subject differs:
`invalid_request` for token exchange (RFC 8693 §2.2.2), `invalid_grant` for jwt-bearer
(RFC 7523 §3.1)."""

from __future__ import annotations

import secrets
from typing import Any

from broker.domain.inventory import state_name
from broker.domain.limits import (
    check_before_signature,
    check_identity_rate,
    identity_window,
    note_denial,
)
from broker.domain.limits import options as limit_options
from broker.domain.models import (
    AGENT_PROFILE,
    GRANT_TYPE_JWT_BEARER,
    Grant,
    IssuedToken,
    VerifiedSubject,
)
from broker.domain.models import ExchangeRequest as ExchangeRequest
from broker.domain.ports import Services, StoreUnavailable, WriteRefused
from broker.errors import (
    BrokerError,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    TemporarilyUnavailable,
    TooManyRequests,
)
from broker.identity.errors import KeysUnavailable, VerificationError
from broker.identity.verifier import token_sha256
from broker.policy.engine import (
    check_identity_usable,
    check_type_requirements,
    evaluate,
    issuer_kind_mismatch,
)
from broker.policy.matcher import Miss
from broker.tokens.mint import TokenTooLarge, mint_access_token


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(16)


def bad_subject(req: ExchangeRequest, message: str, **kw: Any) -> BrokerError:
    """The workload JWT itself is unacceptable: invalid, replayed, unmatched or blocked."""
    if req.grant_type == GRANT_TYPE_JWT_BEARER:
        # RFC 7523 §3.1: a JWT that is not valid, or not acceptable, is invalid_grant.
        return InvalidGrant(f"assertion: {message}", **kw)
    # RFC 8693 §2.2.2: an invalid or unacceptable subject_token is invalid_request.
    return InvalidRequest(f"subject_token: {message}", **kw)


def _denial_from_verification(req: ExchangeRequest, err: VerificationError) -> BrokerError:
    if isinstance(err, KeysUnavailable):
        return TemporarilyUnavailable(err.message, debug=err.debug, reason=err.reason)
    return bad_subject(req, err.message, debug=err.debug, reason=err.reason)


def _blocked(req: ExchangeRequest, identity_id: str, state: str) -> BrokerError:
    return bad_subject(
        req,
        f"the matched identity is {state}",
        reason=f"identity_{state}",
        details={"identity": identity_id},
    )


def _task_foreign() -> BrokerError:
    # A task belongs to the identity that opened it: another identity naming it could
    # otherwise complete (end) that identity's tokens. Not retryable: the name is taken.
    return InvalidRequest("task_id: the task belongs to another identity", reason="task_foreign")


def _epoch_moved(reason: str = "epoch_changed") -> BrokerError:
    # A revoke-all ran while the exchange was in flight: nothing in flight at the cut comes
    # out live. The caller retries; its subject token was not spent.
    return TemporarilyUnavailable(
        "credentials were revoked while the exchange ran; retry", reason=reason
    )


def _on_issuer(svc: Services, req: ExchangeRequest, issuer: Any, arrival: dict[str, Any]) -> None:
    """Runs once the token names a configured issuer, before any key fetch or signature
    work: rate limits, then the revoke-all epoch this exchange answers to."""
    arrival["address_counted"] = True
    check_before_signature(
        svc,
        req.client_address,
        # an agent's issuer is per identity: a forger must not drain its budget
        None if issuer.profile == AGENT_PROFILE else issuer.id,
    )
    # Taken before verification can wait on anything (an issuer's keys): the grant write
    # refuses if a revoke-all moved the epoch since (SECURITY.md: revoke-all is a cut).
    try:
        arrival["epoch"] = svc.store.current_epoch()
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err


def exchange_token(req: ExchangeRequest, svc: Services) -> IssuedToken:
    """Swap a verified workload identity for a short-lived, task-scoped token (RFC 8693 §2.1).

    The grant, its indexes, the replay entry and the audit record are written in one atomic
    step before the token is returned. A denial never says which rule value was expected;
    the audit event records the rule and the values compared."""
    now = svc.clock.now()
    # One snapshot of the inventory for the whole request: a reload swaps these between
    # requests (broker/reload.py), never under a request that has started.
    verifier, matcher, config = svc.verifier, svc.matcher, svc.config
    event: dict[str, Any] = {
        "event": "token.exchange",
        "grant_type": req.grant_type,
        "request_id": req.request_id,
        "client_address": req.client_address,
        "token_sha256": token_sha256(req.subject_token),
        "issuer": None,
        "identity": None,
        "task": req.task_id,
    }
    if req.purpose:
        event["purpose"] = req.purpose
    arrival: dict[str, Any] = {"address_counted": False}
    try:
        try:
            subject: VerifiedSubject = verifier.verify(
                req.subject_token,
                now=now,
                # Rate-limited by the claimed issuer before any signature work, never by a
                # claimed identity (which a forger could exhaust for its victim).
                on_issuer=lambda issuer: _on_issuer(svc, req, issuer, arrival),
            )
        except VerificationError as err:
            raise _denial_from_verification(req, err) from err
        if "epoch" not in arrival:
            # A verifier that never reported the issuer: no epoch from before verification,
            # so no grant (one read now could be stamped after a revoke-all).
            raise BrokerError(debug="the verifier did not call on_issuer")
        epoch: int = arrival["epoch"]
        event["issuer"] = subject.issuer.id
        event["token_sha256"] = subject.token_sha256
        event["subject"] = str(subject.claims.get("sub", ""))[:256]
        event.update(subject.context)  # workload binding: pod and node, CI run, SPIFFE ID

        task_id = req.task_id or new_id("task_")
        event["task"] = task_id
        replay_jti = subject.jti if subject.issuer.replay == "single-use" else None

        found = matcher.match(subject.issuer.id, subject.match_attributes)
        if isinstance(found, Miss):
            names = ", ".join(f"'{c}'" for c in found.claims)
            raise bad_subject(
                req,
                f"no identity matches this token (claims that did not match: {names})"
                if found.claims
                else "no identity is configured for this issuer",
                reason="no_matching_identity",
                details={"nearest_rule": found.rule_id, "compared": dict(found.compared)},
            )
        identity, rule = found.identity, found.rule
        event.update(
            identity=identity.id, rule=rule.id, owner=identity.owner, identity_type=identity.type
        )
        # One round trip for everything the decision reads from Redis. Replay is read here and
        # claimed only in the atomic grant write: a request refused later must not burn the
        # caller's jti (SECURITY.md: no token, no state). The identity is verified now, so it
        # is safe to count against its rate limit.
        try:
            state = svc.store.preflight(
                issuer_id=subject.issuer.id,
                jti=replay_jti,
                task_id=task_id,
                identity_id=identity.id,
                rate_window_seconds=identity_window(svc),
            )
        except StoreUnavailable as err:
            raise TemporarilyUnavailable(debug=str(err)) from err
        if state.replayed:
            raise bad_subject(req, "the token has already been used", reason="replayed")
        check_identity_rate(svc, state.identity_requests, state.identity_window_reset)
        if state.task_owner is not None and state.task_owner != identity.id:
            raise _task_foreign()
        if state.task_completed:
            raise InvalidRequest("task_id: the task is already complete", reason="task_completed")
        if issuer_kind_mismatch(identity, subject.issuer):
            raise bad_subject(
                req,
                "this kind of token cannot act for the matched identity",
                reason="identity_type_mismatch",
                details={
                    "identity": identity.id,
                    "type": identity.type,
                    "issuer": subject.issuer.id,
                },
            )
        check_identity_usable(identity, now)
        if state.identity_state is not None:
            raise _blocked(req, identity.id, state_name(state.identity_state))
        rules = config.type_rules(identity.type)
        check_type_requirements(identity, req, rules)
        decision = evaluate(identity, req, config.broker, rules)
        if state.epoch != epoch:
            raise _epoch_moved()

        iat = int(now)
        grant = Grant(
            jti=new_id(),
            identity_id=identity.id,
            identity_type=identity.type,
            owner=identity.owner,
            task_id=task_id,
            audiences=decision.audiences,
            scopes=decision.scopes,
            iat=iat,
            exp=iat + decision.ttl_seconds,
            client_id=identity.id,
            issuer_id=subject.issuer.id,
            epoch=epoch,  # as the request arrived: the write refuses if it has moved since
            purpose=req.purpose or "",
        )
        try:
            token = mint_access_token(grant, svc.keyring, config.broker.issuer)
        except TokenTooLarge as err:
            raise InvalidTarget(
                "the requested audiences and scopes do not fit in one token; ask for fewer",
                reason="token_too_large",
                debug=str(err),
            ) from err
        event.update(
            outcome="issued",
            jti=grant.jti,
            audience=list(grant.audiences),
            scope=" ".join(grant.scopes),
            exp=grant.exp,
            ts=now,
        )
        replay = (
            (subject.issuer.id, replay_jti, subject.exp + config.broker.clock_skew_seconds)
            if replay_jti
            else None
        )
        try:
            svc.store.save_grant(
                grant,
                replay=replay,
                audit=event,
                now=iat,
                quota=limit_options(svc).max_live_grants_per_identity,
            )
        except StoreUnavailable as err:
            raise TemporarilyUnavailable(debug=str(err)) from err
        except WriteRefused as refused:
            if refused.reason == "replayed":
                raise bad_subject(
                    req, "the token has already been used", reason="replayed"
                ) from refused
            if refused.reason == "task_completed":
                raise InvalidRequest(
                    "task_id: the task is already complete", reason="task_completed"
                ) from refused
            if refused.reason == "identity_blocked":
                # Suspended between our read and our write: the write saw it atomically.
                raise _blocked(req, identity.id, "suspended") from refused
            if refused.reason == "quota_exceeded":
                raise TooManyRequests(
                    "this identity holds too many live tokens; complete tasks or retry later",
                    retry_after=30,
                    reason="quota_exceeded",
                ) from refused
            if refused.reason == "task_foreign":
                raise _task_foreign() from refused  # another identity opened it first
            # epoch_changed: a revoke-all ran while we worked; the caller retries.
            raise _epoch_moved(refused.reason) from refused
        svc.audit.record(event, stored=True)
        return IssuedToken(access_token=token, grant=grant, expires_in=decision.ttl_seconds)
    except BrokerError as err:
        event.update(
            ts=now,
            outcome="denied",
            error=err.error,
            reason=err.reason,
            description=err.description,
        )
        if err.debug:
            event["debug"] = err.debug[:500]
        if err.details:
            event["details"] = err.details
        svc.audit.record(event)
        err.audited = True
        err.address_counted = arrival["address_counted"]
        note_denial(svc, event.get("identity"), err.reason, event)
        raise
