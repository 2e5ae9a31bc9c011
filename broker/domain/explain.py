"""Dry-run one exchange's decision without issuing anything (`errand policy explain`): the
allowances, the scope classes, then the runtime policy, and which policies decided.

Nothing is written and the subject token's signature is not checked: this answers "what
would the policy say about this request", for the people who write policies."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from broker.domain.decision import Asked, policy_request
from broker.domain.models import Config, ExchangeRequest, Identity
from broker.errors import BrokerError
from broker.policy.engine import check_type_requirements, evaluate
from broker.policy.matcher import IdentityMatcher, Miss


@dataclass
class Explanation:
    decision: str  # allow | deny | approval_required
    stage: str  # identity | allowances | scope_classes | policy
    identity: str | None = None
    deny_class: str = ""
    policies: list[str] = field(default_factory=list)
    why: str = ""
    policy_digest: str | None = None
    scope_classes: dict[str, str] = field(default_factory=dict)


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, signature NOT checked (dry runs only)."""
    try:
        payload = token.strip().split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as err:
        raise ValueError("not a compact JWT") from err
    if not isinstance(data, dict):
        raise ValueError("the JWT payload is not an object")
    return data


def identity_for_token(config: Config, claims: dict[str, Any]) -> tuple[Identity, str]:
    issuer = config.issuer_by_url(str(claims.get("iss", "")))
    if issuer is None:
        raise ValueError("the token's iss is not a configured issuer")
    found = IdentityMatcher(config).match(issuer.id, claims)
    if isinstance(found, Miss):
        raise ValueError(f"no identity matches the token (nearest rule {found.rule_id})")
    return found.identity, issuer.id


def explain(
    config: Config,
    identity: Identity,
    issuer_id: str,
    claims: dict[str, Any],
    req: ExchangeRequest,
    now: float,
) -> Explanation:
    out = Explanation(decision="deny", stage="allowances", identity=identity.id)
    policy = config.runtime_policy
    out.policy_digest = policy.digest if policy else None
    try:
        check_type_requirements(identity, req, config.type_rules(identity.type))
        decision = evaluate(identity, req, config.broker, config.type_rules(identity.type))
        out.stage = "scope_classes"
        asked = Asked(identity, issuer_id, claims, req.task_id or "dry-run")
        preq = policy_request(req, config, asked, decision, now)
    except BrokerError as err:
        out.deny_class, out.why = err.reason, err.description
        return out
    out.stage, out.scope_classes = "policy", dict(preq.scope_classes)
    if policy is None:
        out.decision, out.why = "allow", "no runtime policy configured: the allowances decide"
        return out
    verdict = policy.decide(preq)
    out.policies, out.why = list(verdict.policies), verdict.detail
    if verdict.allowed:
        out.decision = "allow"
    elif verdict.deny_class == "approval_required":
        out.decision, out.deny_class = "approval_required", verdict.deny_class
    else:
        out.deny_class = verdict.deny_class
    return out
