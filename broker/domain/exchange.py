"""The token exchange: a verified workload identity in, a task-scoped access token out."""

from __future__ import annotations

import secrets
from typing import Any

from broker.domain.models import Grant, IssuedToken, VerifiedSubject
from broker.domain.models import ExchangeRequest as ExchangeRequest
from broker.domain.ports import Services, StoreUnavailable, WriteRefused
from broker.errors import BrokerError, InvalidRequest, TemporarilyUnavailable
from broker.identity.errors import KeysUnavailable, VerificationError
from broker.policy.engine import check_identity_usable, evaluate
from broker.policy.matcher import Miss
from broker.tokens.mint import mint_access_token


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(16)


def _denial_from_verification(err: VerificationError) -> BrokerError:
    if isinstance(err, KeysUnavailable):
        return TemporarilyUnavailable(err.message, debug=err.debug, reason=err.reason)
    # RFC 8693 §2.2.2: an invalid or unacceptable subject_token is invalid_request.
    return InvalidRequest(f"subject_token: {err.message}", debug=err.debug, reason=err.reason)


def exchange_token(req: ExchangeRequest, svc: Services) -> IssuedToken:
    """Swap a verified workload identity for a short-lived, task-scoped token (RFC 8693 §2.1).

    The grant, its indexes, the replay entry and the audit record are written in one atomic
    step before the token is returned. A denial never says which rule value was expected;
    the audit event records the rule and the values compared."""
    now = svc.clock.now()
    event: dict[str, Any] = {
        "event": "token.exchange",
        "request_id": req.request_id,
        "client_address": req.client_address,
        "token_sha256": None,
        "issuer": None,
        "identity": None,
        "task": req.task_id,
    }
    try:
        try:
            subject: VerifiedSubject = svc.verifier.verify(req.subject_token, now=now)
        except VerificationError as err:
            raise _denial_from_verification(err) from err
        event["issuer"] = subject.issuer.id
        event["token_sha256"] = subject.token_sha256
        event["subject"] = str(subject.claims.get("sub", ""))[:256]

        # Replay is read here and claimed only in the atomic grant write: a request refused
        # later must not burn the caller's jti (SECURITY.md: no token, no state).
        task_id = req.task_id or new_id("task_")
        event["task"] = task_id
        replay_jti = subject.jti if subject.issuer.replay == "single-use" else None
        try:
            state = svc.store.preflight(issuer_id=subject.issuer.id, jti=replay_jti, task_id=task_id)
        except StoreUnavailable as err:
            raise TemporarilyUnavailable(debug=str(err)) from err
        if state.replayed:
            raise InvalidRequest("subject_token: the token has already been used", reason="replayed")
        if state.task_completed:
            raise InvalidRequest("task_id: the task is already complete", reason="task_completed")

        found = svc.matcher.match(subject.issuer.id, subject.claims)
        if isinstance(found, Miss):
            names = ", ".join(f"'{c}'" for c in found.claims)
            raise InvalidRequest(
                f"subject_token: no identity matches this token (claims that did not match: {names})"
                if found.claims
                else "subject_token: no identity is configured for this issuer",
                reason="no_matching_identity",
                details={"nearest_rule": found.rule_id, "compared": dict(found.compared)},
            )
        identity, rule = found.identity, found.rule
        event.update(identity=identity.id, rule=rule.id, owner=identity.owner)
        check_identity_usable(identity, now)
        decision = evaluate(identity, req, svc.config.broker)


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
            epoch=state.epoch,
            purpose=req.purpose or "",
        )
        token = mint_access_token(grant, svc.keyring, svc.config.broker.issuer)
        event.update(
            outcome="issued",
            jti=grant.jti,
            audience=list(grant.audiences),
            scope=" ".join(grant.scopes),
            exp=grant.exp,
            ts=now,
        )
        replay = (
            (subject.issuer.id, replay_jti, subject.exp + svc.config.broker.clock_skew_seconds)
            if replay_jti
            else None
        )
        try:
            svc.store.save_grant(grant, replay=replay, audit=event, now=iat)
        except StoreUnavailable as err:
            raise TemporarilyUnavailable(debug=str(err)) from err
        except WriteRefused as refused:
            if refused.reason == "replayed":
                raise InvalidRequest(
                    "subject_token: the token has already been used", reason="replayed"
                ) from refused
            if refused.reason == "task_completed":
                raise InvalidRequest(
                    "task_id: the task is already complete", reason="task_completed"
                ) from refused
            # epoch_changed: a revoke-all ran while we worked; the caller retries.
            raise TemporarilyUnavailable(
                "credentials were revoked while the exchange ran; retry", reason=refused.reason
            ) from refused
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
        raise
