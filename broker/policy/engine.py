"""Decide what a matched identity may be issued for this request.

Nothing is silently narrowed: an audience outside the allowance is `invalid_target`, a scope
outside it is `invalid_scope` (RFC 8693 §2.2.2, RFC 6749 §5.2). The lifetime is the least of
the requested lifetime (else the identity type's default, else the broker's), the allowance's
max TTL, the identity type's max TTL and the broker's global maximum.

Identity types (docs/identities.md): agents must name a task and a purpose; partner tokens
carry one audience; a type may be confined to a list of audiences; human identities are
matched only by issuers marked human, and workload issuers never match them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broker.domain.models import (
    BUILTIN_IDENTITY_TYPES,
    SCOPE_TOKEN,
    BrokerOptions,
    ExchangeRequest,
    Identity,
    IdentityTypeRules,
    TrustedIssuer,
)
from broker.errors import InvalidRequest, InvalidScope, InvalidTarget

# How much of a refused scope list the error_description repeats back: the scopes are the
# caller's own request, but a long request must not make a long response.
DENIED_SCOPES_SHOWN = 8
DENIED_SCOPE_CHARS = 64


@dataclass(frozen=True)
class Decision:
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    ttl_seconds: int


def denied_scopes_description(denied: list[str]) -> str:
    """Name the refused scopes, bounded: at most DENIED_SCOPES_SHOWN of them, each cut to
    DENIED_SCOPE_CHARS characters. The form parser admits only RFC 6749 scope-tokens
    (printable ASCII, no space, quote or backslash); anything else is not repeated."""
    shown = [
        s if len(s) <= DENIED_SCOPE_CHARS else s[: DENIED_SCOPE_CHARS - 3] + "..."
        for s in denied[:DENIED_SCOPES_SHOWN]
        if SCOPE_TOKEN.fullmatch(s)
    ]
    more = len(denied) - len(shown)
    if not shown:
        return InvalidScope.description
    text = "scope not allowed for this identity: " + ", ".join(shown)
    return text + (f" (and {more} more)" if more else "")


def check_identity_usable(identity: Identity, now: float) -> None:
    if not identity.owner:
        raise InvalidRequest("the matched identity has no owner", reason="identity_ownerless")
    if identity.expires is not None:
        today = datetime.fromtimestamp(now, UTC).date()
        if identity.expires < today:
            raise InvalidRequest(
                "the matched identity has expired",
                reason="identity_expired",
                details={"identity": identity.id, "expires": identity.expires.isoformat()},
            )


def issuer_kind_mismatch(identity: Identity, issuer: TrustedIssuer) -> bool:
    """A human identity is matched only by a human issuer, and a human issuer only matches
    human identities. The configuration refuses such rules; the exchange checks it anyway."""
    return (identity.type == "human") != issuer.human


def check_type_requirements(
    identity: Identity, req: ExchangeRequest, rules: IdentityTypeRules
) -> None:
    """Parameters an identity type must send: agents always name their task and its purpose."""
    missing = [
        name
        for name, required, value in (
            ("task_id", rules.require_task, req.task_id),
            ("purpose", rules.require_purpose, req.purpose),
        )
        if required and not value
    ]
    if missing:
        raise InvalidRequest(
            f"{missing[0]}: required for {identity.type} identities "
            f"(name the task and its purpose: {', '.join(missing)})",
            reason="task_context_required",
            details={"identity": identity.id, "missing": missing},
        )


def evaluate(
    identity: Identity,
    req: ExchangeRequest,
    broker: BrokerOptions,
    rules: IdentityTypeRules | None = None,
) -> Decision:
    allow = identity.allow
    rules = rules or BUILTIN_IDENTITY_TYPES[identity.type]
    if req.audiences:
        audiences = tuple(dict.fromkeys(req.audiences))
        denied = [a for a in audiences if a not in allow.audiences]
        if denied:
            raise InvalidTarget(
                details={"requested": [a[:256] for a in denied], "rule": "allow.audiences"}
            )
        outside = [a for a in audiences if rules.audiences is not None and a not in rules.audiences]
        if outside:
            raise InvalidTarget(
                details={
                    "requested": [a[:256] for a in outside],
                    "rule": f"identity_types.{identity.type}.audiences",
                }
            )
        if rules.single_audience and len(audiences) > 1:
            raise InvalidTarget(
                f"{identity.type} tokens carry one audience: request one at a time",
                reason="single_audience",
            )
    elif len(allow.audiences) == 1:
        audiences = allow.audiences
    else:
        raise InvalidTarget(
            "name the audience or resource: this identity may use more than one",
            reason="audience_required",
        )

    if req.scopes is None:
        if not allow.default_scopes:
            raise InvalidScope(
                "the scope parameter is required for this identity", reason="scope_required"
            )
        scopes = allow.default_scopes
    else:
        scopes = tuple(dict.fromkeys(req.scopes))
        denied = [s for s in scopes if s not in allow.scopes]
        if denied:
            raise InvalidScope(
                denied_scopes_description(denied),
                details={"requested": [s[:128] for s in denied], "rule": "allow.scopes"},
            )

    ttl = min(
        req.requested_lifetime or rules.default_ttl_seconds or broker.default_token_ttl_seconds,
        allow.max_ttl_seconds,
        rules.max_ttl_seconds,
        broker.max_token_ttl_seconds,
    )
    return Decision(audiences=audiences, scopes=scopes, ttl_seconds=ttl)
