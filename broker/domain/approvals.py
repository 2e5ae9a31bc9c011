"""Human approval of high-impact requests, in the manner of the device flow (RFC 8628 §3.4-3.5)
and CIBA polling: the exchange answers `authorization_pending` with an approval id and an
interval; the caller repeats the same exchange with `approval_id` until a person decided.

An approval is bound to exactly the identity, task, audiences and scopes it was asked for,
expires, and issues one token, once. An approver is a human identity named in
`policy.approvers`, never the identity that asked. Every step is audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from broker.domain.approval_webhook import announce
from broker.domain.bulk_revocation import check_reason
from broker.domain.ports import Approval, ApprovalStore, Services
from broker.errors import (
    AccessDenied,
    ApprovalDenied,
    AuthorizationPending,
    BrokerError,
    ExpiredToken,
    InvalidGrant,
    InvalidRequest,
    NotFound,
    SlowDown,
    TemporarilyUnavailable,
)


@dataclass(frozen=True)
class ApprovalRequest:
    """What an exchange asks a person to approve."""

    identity_id: str
    owner: str
    task_id: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    purpose: str
    policies: tuple[str, ...]


def _store(svc: Services) -> ApprovalStore:
    if svc.approvals is None:
        raise TemporarilyUnavailable(debug="no approval store is wired")
    return svc.approvals


def _event(svc: Services, name: str, approval: Approval, **fields: object) -> None:
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": name,
            "approval_id": approval.id,
            "identity": approval.identity_id,
            "owner": approval.owner,
            "task": approval.task_id,
            "audience": list(approval.audiences),
            "scope": " ".join(approval.scopes),
            "policies": list(approval.policies),
            **fields,
        },
        required=True,  # an approval opened or decided without its event is refused (503)
    )


def request_approval(svc: Services, asked: ApprovalRequest) -> AuthorizationPending:
    """Open an approval for this exact request; the answer to give the caller."""
    opts = svc.config.policy_options
    now = int(svc.clock.now())
    approval = Approval(
        id="apr_" + secrets.token_urlsafe(16),
        state="pending",
        identity_id=asked.identity_id,
        owner=asked.owner,
        task_id=asked.task_id,
        audiences=asked.audiences,
        scopes=asked.scopes,
        purpose=asked.purpose,
        created_at=now,
        expires_at=now + opts.approval_ttl_seconds,
        interval=opts.approval_poll_interval_seconds,
        policies=asked.policies,
    )
    _store(svc).create(approval)
    _event(svc, "approval.requested", approval, outcome="pending", expires_at=approval.expires_at)
    announce(svc, approval)  # the webhook, if configured: enqueued, never blocking
    return AuthorizationPending(
        approval.id,
        approval.interval,
        details={"approval_id": approval.id, "policies": list(asked.policies)},
    )


def _bound(approval: Approval, asked: ApprovalRequest) -> bool:
    return (
        approval.identity_id == asked.identity_id
        and approval.task_id == asked.task_id
        and approval.audiences == asked.audiences
        and approval.scopes == asked.scopes
    )


def poll_approval(svc: Services, approval_id: str, asked: ApprovalRequest) -> Approval:
    """The approval behind a poll, once a person approved it; otherwise the polling answer
    (authorization_pending, slow_down, access_denied, expired_token) is raised."""
    store, now = _store(svc), int(svc.clock.now())
    approval = store.get(approval_id)
    if approval is None:
        raise ExpiredToken(details={"approval_id": approval_id})
    if not _bound(approval, asked):
        # Given for another identity, task, audience or scope set: never stretched to cover
        # a different request, however close.
        raise InvalidGrant(
            "approval_id: the approval was given for a different request",
            reason="approval_mismatch",
            details={"approval_id": approval_id},
        )
    if approval.expires_at <= now:
        raise ExpiredToken(details={"approval_id": approval_id})
    state, too_soon = store.poll(approval_id, now=now, interval=approval.interval)
    details: dict[str, object] = {"approval_id": approval_id}
    if state == "":
        raise ExpiredToken(details=details)
    if state == "denied":
        raise ApprovalDenied(details={**details, "approver": approval.approver})
    if state == "issued":
        raise InvalidGrant(
            "approval_id: the approval was already used", reason="approval_used", details=details
        )
    if too_soon:
        raise SlowDown(approval_id, approval.interval, details=details)
    if state != "approved":
        raise AuthorizationPending(approval_id, approval.interval, details=details)
    return approval


def spend_approval(svc: Services, approval: Approval) -> None:
    """Mark the approval used by the token about to be issued: one token per approval."""
    outcome = _store(svc).consume(approval.id, now=int(svc.clock.now()))
    if outcome == "ok":
        return
    if outcome in ("expired", "missing"):
        raise ExpiredToken(details={"approval_id": approval.id})
    raise InvalidGrant(
        "approval_id: the approval was already used",
        reason="approval_used",
        details={"approval_id": approval.id, "state": outcome},
    )


# -- approvers -----------------------------------------------------------------------------------
def decide_approval(
    svc: Services, approval_id: str, *, approve: bool, approver: str, reason: str, actor: str
) -> Approval:
    """A person approves or denies. `approver` must be a human identity named in
    policy.approvers and not the identity that asked; `actor` is who called (audit)."""
    reason = check_reason(reason)
    config = svc.config
    approver_identity = config.identity(approver)
    if (
        approver not in config.policy_options.approvers
        or approver_identity is None
        or approver_identity.type != "human"
    ):
        _refused(svc, approval_id, approver, "not_an_approver", actor)
        raise AccessDenied(
            "approver: not an identity with the approver role", reason="not_an_approver"
        )
    store, now = _store(svc), int(svc.clock.now())
    state = "approved" if approve else "denied"
    outcome = store.decide(approval_id, state=state, approver=approver, reason=reason, now=now)
    if outcome != "ok":
        _refused(svc, approval_id, approver, outcome, actor)
        raise _decision_refused(outcome)
    approval = store.get(approval_id)
    if approval is None:  # pragma: no cover - decided a moment ago; it lingers past expiry
        raise NotFound("no such approval", reason="approval_missing")
    _event(
        svc,
        f"approval.{state}",
        approval,
        outcome=state,
        approver=approver,
        reason=reason,
        actor=actor,
    )
    return approval


def _decision_refused(outcome: str) -> BrokerError:
    if outcome == "missing":
        return NotFound("no such approval (or it expired long ago)", reason="approval_missing")
    if outcome == "self_approval":
        return AccessDenied(
            "approver: an identity cannot approve its own request", reason="self_approval"
        )
    if outcome == "expired":
        return InvalidRequest("the approval has expired", reason="approval_expired")
    return InvalidRequest(f"the approval is already {outcome}", reason="approval_decided")


def _refused(svc: Services, approval_id: str, approver: str, why: str, actor: str) -> None:
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": "approval.decision",
            "outcome": "refused",
            "reason": why,
            "approval_id": approval_id,
            "approver": approver,
            "actor": actor,
        }
    )


def list_pending(svc: Services, limit: int = 100) -> list[Approval]:
    return _store(svc).pending(now=int(svc.clock.now()), limit=limit)


def show_approval(svc: Services, approval_id: str) -> Approval:
    found = _store(svc).get(approval_id)
    if found is None:
        raise NotFound("no such approval (or it expired long ago)", reason="approval_missing")
    return found
