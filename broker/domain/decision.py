"""The runtime policy step of an exchange, after the identity's allowances: scope classes,
then the compiled policy (Cedar, broker/policy/cedar_engine.py), then human approval when
the policy asks for it (domain/approvals.py).

The caller learns which class of rule denied (`scope_class`, `policy_forbid`,
`policy_no_permit`, `policy_error`, `approval_required`), never a rule's text; the audit
event names the deciding policies and the policy set's digest.

Without a policy directory configured only the scope-class checks apply (and only for
audiences that declare their scopes): allowances alone decide, as before."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from broker.domain.approvals import (
    ApprovalRequest,
    poll_approval,
    request_approval,
    spend_approval,
)
from broker.domain.models import (
    Config,
    ExchangeRequest,
    Identity,
    PolicyRequest,
    PolicyVerdict,
    RuntimePolicy,
)
from broker.domain.ports import Services
from broker.errors import InvalidRequest, InvalidScope
from broker.policy.engine import Decision
from broker.policy.scope_classes import check_scope_classes, classify

DENY_MESSAGES = {
    "policy_forbid": "the runtime policy forbids this request (policy_forbid)",
    "policy_no_permit": "no runtime policy permits this request (policy_no_permit)",
    "policy_error": "the runtime policy could not decide; denied (policy_error)",
}


@dataclass(frozen=True)
class PolicyOutcome:
    """What the grant records of the decision."""

    approval_id: str = ""
    contracts: tuple[tuple[str, str], ...] = ()
    policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Asked:
    """The exchange as far as the runtime policy cares."""

    identity: Identity
    issuer_id: str
    claims: Any
    task_id: str
    chain: tuple[str, ...] = ()  # a delegation hop's actors, the new one first


def contracts_of(config: Config, audiences: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (a, config.audiences[a].contract_version)
        for a in audiences
        if a in config.audiences and config.audiences[a].contract_version
    )


def policy_request(
    req: ExchangeRequest, config: Config, asked: Asked, decision: Decision, now: float
) -> PolicyRequest:
    """The policy's view of the exchange. Scope classes are checked here (they refuse with
    `scope_class`). Labels are the ones the request names (its task's, on the exchange that
    opens it); `dpop` says the token will be bound to a key."""
    classes = classify(decision.audiences, decision.scopes, config.audiences)
    check_scope_classes(classes, task_named=bool(req.task_id), purpose=req.purpose)
    return PolicyRequest(
        identity=asked.identity,
        issuer_id=asked.issuer_id,
        claims=asked.claims,
        audiences=decision.audiences,
        scopes=decision.scopes,
        scope_classes=classes,
        purpose=req.purpose or "",
        task_id=asked.task_id,
        task_named=bool(req.task_id),
        labels=tuple(f"{k}={v}" for k, v in req.task_labels),
        now=now,
        chain=asked.chain,
        dpop=req.dpop is not None,
    )


def denial(verdict: PolicyVerdict, digest: str) -> InvalidScope:
    return InvalidScope(
        DENY_MESSAGES.get(verdict.deny_class, DENY_MESSAGES["policy_error"]),
        reason=verdict.deny_class or "policy_error",
        details={
            "policies": list(verdict.policies),
            "policy_digest": digest,
            "why": verdict.detail[:500],
        },
    )


def runtime_decision(
    svc: Services,
    req: ExchangeRequest,
    config: Config,
    asked: Asked,
    decision: Decision,
    now: float,
) -> PolicyOutcome:
    """Allowed (what the grant records), or raise what the caller is told."""
    preq = policy_request(req, config, asked, decision, now)
    contracts = contracts_of(config, decision.audiences)
    policy: RuntimePolicy | None = config.runtime_policy
    if policy is None:
        if req.approval_id:
            raise InvalidRequest(
                "approval_id: this broker asks for no approvals", reason="approval_unexpected"
            )
        return PolicyOutcome(contracts=contracts)
    verdict = policy.decide(preq)
    if verdict.allowed:
        return PolicyOutcome(contracts=contracts, policies=verdict.policies)
    if verdict.deny_class != "approval_required":
        raise denial(verdict, policy.digest)
    asked_for = ApprovalRequest(
        identity_id=asked.identity.id,
        owner=asked.identity.owner,
        task_id=asked.task_id,
        audiences=decision.audiences,
        scopes=decision.scopes,
        purpose=req.purpose or "",
        policies=verdict.policies,
    )
    if not req.approval_id:
        raise request_approval(svc, asked_for)
    approval = poll_approval(svc, req.approval_id, asked_for)
    # Approved: the same policy, with the approval, must now allow (policies may have
    # changed since the person decided).
    approved = policy.decide(replace(preq, approved=True))
    if not approved.allowed:
        raise denial(approved, policy.digest)
    spend_approval(svc, approval)
    return PolicyOutcome(
        approval_id=approval.id,
        contracts=contracts,
        policies=tuple(dict.fromkeys(verdict.policies + approved.policies)),
    )
