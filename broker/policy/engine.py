"""Decide what a matched identity may be issued for this request.

Nothing is silently narrowed: an audience outside the allowance is `invalid_target`, a scope
outside it is `invalid_scope` (RFC 8693 §2.2.2, RFC 6749 §5.2). The lifetime is the least of
the requested lifetime, the allowance's max TTL and the broker's global maximum."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broker.domain.models import BrokerOptions, ExchangeRequest, Identity
from broker.errors import InvalidRequest, InvalidScope, InvalidTarget


@dataclass(frozen=True)
class Decision:
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    ttl_seconds: int


def check_identity_usable(identity: Identity, now: float) -> None:
    if not identity.owner:
        raise InvalidRequest("the matched identity has no owner", reason="identity_ownerless")
    if identity.expires is not None:
        today = datetime.fromtimestamp(now, UTC).date()
        if identity.expires < today:
            raise InvalidRequest(
                "the matched identity has expired", reason="identity_expired",
                details={"identity": identity.id, "expires": identity.expires.isoformat()},
            )


def evaluate(identity: Identity, req: ExchangeRequest, broker: BrokerOptions) -> Decision:
    allow = identity.allow
    if req.audiences:
        audiences = tuple(dict.fromkeys(req.audiences))
        denied = [a for a in audiences if a not in allow.audiences]
        if denied:
            raise InvalidTarget(
                details={"requested": [a[:256] for a in denied], "rule": "allow.audiences"}
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
            raise InvalidScope("the scope parameter is required for this identity", reason="scope_required")
        scopes = allow.default_scopes
    else:
        scopes = tuple(dict.fromkeys(req.scopes))
        denied = [s for s in scopes if s not in allow.scopes]
        if denied:
            raise InvalidScope(details={"requested": [s[:128] for s in denied], "rule": "allow.scopes"})

    ttl = min(
        req.requested_lifetime or broker.default_token_ttl_seconds,
        allow.max_ttl_seconds,
        broker.max_token_ttl_seconds,
    )
    return Decision(audiences=audiences, scopes=scopes, ttl_seconds=ttl)
