"""How a refused token request is answered and recorded.

`error_for` is the one table from why the exchange refused (a verification error, a
refusal its preflight read found, or a reason the atomic grant write returned) to what the
client is told. The same reason found before the write and re-checked inside it reads the
same. A denial never says which rule value was expected; the audit event records the rule
and the values compared.

`record_refusal` is where every refused token request ends, once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.domain.audit_event import ExchangeAudit
from broker.domain.denials import note_denial
from broker.domain.limits import address_over_limit
from broker.domain.models import GRANT_TYPE_JWT_BEARER, ExchangeRequest
from broker.domain.ports import Services, WriteRefused
from broker.errors import (
    BrokerError,
    InvalidGrant,
    InvalidRequest,
    TemporarilyUnavailable,
    TooManyRequests,
)
from broker.identity.errors import KeysUnavailable, VerificationError


class Refused(Exception):
    """The exchange refuses for `reason`; `context` is what error_for needs to say so."""

    def __init__(self, reason: str, **context: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.context = context


def bad_subject(req: ExchangeRequest, message: str, **kw: Any) -> BrokerError:
    """The workload JWT itself is unacceptable: invalid, replayed, unmatched or blocked."""
    if req.grant_type == GRANT_TYPE_JWT_BEARER:
        # RFC 7523 §3.1: a JWT that is not valid, or not acceptable, is invalid_grant.
        return InvalidGrant(f"assertion: {message}", **kw)
    # RFC 8693 §2.2.2: an invalid or unacceptable subject_token is invalid_request.
    return InvalidRequest(f"subject_token: {message}", **kw)


def _blocked(state: str) -> Callable[[ExchangeRequest, Mapping[str, Any]], BrokerError]:
    def error(req: ExchangeRequest, context: Mapping[str, Any]) -> BrokerError:
        return bad_subject(
            req,
            f"the matched identity is {state}",
            reason=f"identity_{state}",
            details={"identity": context["identity"]},
        )

    return error


def _no_match(req: ExchangeRequest, context: Mapping[str, Any]) -> BrokerError:
    names = ", ".join(f"'{c}'" for c in context["claims"])
    return bad_subject(
        req,
        f"no identity matches this token (claims that did not match: {names})"
        if names
        else "no identity is configured for this issuer",
        reason="no_matching_identity",
        details={"nearest_rule": context["rule_id"], "compared": dict(context["compared"])},
    )


def _type_mismatch(req: ExchangeRequest, context: Mapping[str, Any]) -> BrokerError:
    return bad_subject(
        req,
        "this kind of token cannot act for the matched identity",
        reason="identity_type_mismatch",
        details={
            "identity": context["identity"],
            "type": context["type"],
            "issuer": context["issuer"],
        },
    )


def _epoch_moved(reason: str = "epoch_changed") -> BrokerError:
    # A revoke-all ran while the exchange was in flight: nothing in flight at the cut comes
    # out live. The caller retries; its subject token was not spent.
    return TemporarilyUnavailable(
        "credentials were revoked while the exchange ran; retry", reason=reason
    )


Answer = Callable[[ExchangeRequest, Mapping[str, Any]], BrokerError]

# Reason -> what the client is told. Preflight refusals and the grant write's (WriteRefused)
# share their entries: the write re-checks atomically what the preflight read found.
REFUSALS: dict[str, Answer] = {
    "no_matching_identity": _no_match,
    "identity_type_mismatch": _type_mismatch,
    "replayed": lambda req, _: bad_subject(
        req, "the token has already been used", reason="replayed"
    ),
    # A task belongs to the identity that opened it: another identity naming it could
    # otherwise complete (end) that identity's tokens. Not retryable: the name is taken.
    "task_foreign": lambda _, __: InvalidRequest(
        "task_id: the task belongs to another identity", reason="task_foreign"
    ),
    "task_completed": lambda _, __: InvalidRequest(
        "task_id: the task is already complete", reason="task_completed"
    ),
    # The task's lifecycle (docs/agents.md): not retryable until someone moves the task.
    "task_suspended": lambda _, __: InvalidRequest(
        "task_id: the task is suspended; resume it first", reason="task_suspended"
    ),
    "task_expired": lambda _, __: InvalidRequest(
        "task_id: the task has passed its deadline", reason="task_expired"
    ),
    "task_spec_mismatch": lambda _, __: InvalidRequest(
        "task_deadline, task_label: set when the task opens; they cannot change",
        reason="task_spec_mismatch",
    ),
    # The task opened with an earlier deadline while this exchange ran: a retry reads it.
    "task_deadline": lambda _, __: TemporarilyUnavailable(
        "the task opened with a deadline while the exchange ran; retry", reason="task_deadline"
    ),
    "identity_suspended": _blocked("suspended"),
    "identity_offboarded": _blocked("offboarded"),
    # Suspended between the preflight read and the write: the write saw it atomically.
    "identity_blocked": _blocked("suspended"),
    "quota_exceeded": lambda _, __: TooManyRequests(
        "this identity holds too many live tokens; complete tasks or retry later",
        retry_after=30,
        reason="quota_exceeded",
    ),
    "epoch_changed": lambda _, __: _epoch_moved(),
}


def error_for(req: ExchangeRequest, err: Exception, identity_id: str | None) -> BrokerError:
    """What the client is told about `err`, raised by one of the exchange's steps."""
    if isinstance(err, BrokerError):
        return err  # decided where it was raised: policy, rate limits, Redis unavailable
    if isinstance(err, KeysUnavailable):
        return TemporarilyUnavailable(err.message, debug=err.debug, reason=err.reason)
    if isinstance(err, VerificationError):
        return bad_subject(req, err.message, debug=err.debug, reason=err.reason)
    if isinstance(err, Refused):
        reason, context = err.reason, {"identity": identity_id, **err.context}
    elif isinstance(err, WriteRefused):
        reason, context = err.reason, {"identity": identity_id}
    else:
        raise TypeError(f"not a refusal: {type(err).__name__}")
    answer = REFUSALS.get(reason)
    # A reason the write gives that is not known here: retrying is the safe answer.
    return answer(req, context) if answer else _epoch_moved(reason)


def record_refusal(
    svc: Services, audit: ExchangeAudit, err: BrokerError, *, address_counted: bool, now: float
) -> BrokerError:
    """End a refused token request: the refusal to raise, recorded once.

    A request refused before its token named a configured issuer (a malformed form or token)
    was never counted against its client address; it is now, so a flood of garbage from one
    address meets the limit too. Over the limit the answer is that 429, written to the log
    only, so the flood cannot churn the bounded audit stream. A suspicious denial of a
    verified identity then counts toward flagging it (domain/denials.py)."""
    refusal, to_stream = err, True
    if not address_counted and not isinstance(err, TooManyRequests):
        over = address_over_limit(svc, audit.client_address)
        if over is not None:
            refusal, to_stream = over, False
    audit.denied(refusal, now)
    audit.record(svc.audit, stored=not to_stream)
    note_denial(svc, audit.identity, refusal.reason, audit.request_id)
    return refusal
