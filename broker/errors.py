"""Errors a client may see, each carrying its OAuth error code (RFC 6749 §5.2).

The `description` is what the client reads: short, stable, and never the value a trust rule
expects. The `debug` text is for logs and the audit trail only and is never serialised."""

from __future__ import annotations


class BrokerError(Exception):
    """An error the client may see, rendered per RFC 6749 §5.2."""

    error = "server_error"
    status_code = 500
    description = "The server could not complete the request."
    reason = "server_error"  # stable machine-readable reason code for audit and metrics

    def __init__(
        self,
        description: str | None = None,
        *,
        debug: str | None = None,
        reason: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(description or self.description)
        self.description = description or self.description
        self.debug = debug  # for logs and audit only; never serialised
        if reason:
            self.reason = reason
        self.details = details or {}  # audit-only context (rule ids, compared values)

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(BrokerError):
    error = "invalid_request"
    status_code = 400
    description = "The request is missing a parameter or is malformed."
    reason = "invalid_request"


class InvalidClient(BrokerError):
    error = "invalid_client"
    status_code = 401
    description = "Client authentication failed."
    reason = "invalid_client"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="errand"'}


class InvalidGrant(BrokerError):
    error = "invalid_grant"
    status_code = 400
    description = "The grant is invalid."
    reason = "invalid_grant"


class UnauthorizedClient(BrokerError):
    error = "unauthorized_client"
    status_code = 400
    description = "The client is not allowed to do this."
    reason = "unauthorized_client"


class UnsupportedGrantType(BrokerError):
    error = "unsupported_grant_type"
    status_code = 400
    description = "The grant_type is not supported."
    reason = "unsupported_grant_type"


class InvalidTarget(BrokerError):
    error = "invalid_target"
    status_code = 400
    description = "The requested audience or resource is not allowed for this identity."
    reason = "audience_not_allowed"


class InvalidScope(BrokerError):
    error = "invalid_scope"
    status_code = 400
    description = "The requested scope is not allowed for this identity."
    reason = "scope_not_allowed"


class UnsupportedTokenType(BrokerError):
    error = "unsupported_token_type"
    status_code = 400
    description = "The token type is not supported."
    reason = "unsupported_token_type"


class InvalidToken(BrokerError):
    """RFC 6750 §3.1: a bearer token that is missing, expired, revoked or not ours."""

    error = "invalid_token"
    status_code = 401
    description = "The access token is invalid."
    reason = "invalid_token"

    def headers(self) -> dict[str, str]:
        challenge = f'Bearer error="invalid_token", error_description="{self.description}"'
        return {"WWW-Authenticate": challenge}


class AccessDenied(BrokerError):
    error = "access_denied"
    status_code = 403
    description = "Access denied."
    reason = "access_denied"


class NotFound(BrokerError):
    error = "not_found"
    status_code = 404
    description = "Not found."
    reason = "not_found"


class Conflict(BrokerError):
    """The resource is in a state that does not allow the request (HTTP 409), e.g. resuming
    a task that has ended. The OAuth code stays a standard one; the status says why."""

    error = "invalid_request"
    status_code = 409
    description = "The request conflicts with the resource's state."
    reason = "conflict"


class TooManyRequests(BrokerError):
    """A rate limit or quota: retryable after Retry-After seconds (HTTP 429, RFC 6585).

    The OAuth code is temporarily_unavailable, so standard clients read it as 'retry later'."""

    error = "temporarily_unavailable"
    status_code = 429
    description = "Too many requests; retry later."
    reason = "rate_limited"

    def __init__(
        self, description: str | None = None, *, retry_after: int = 1, **kw: object
    ) -> None:
        super().__init__(description, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after)))}


class TemporarilyUnavailable(BrokerError):
    """Retryable: the client may try again after Retry-After seconds."""

    error = "temporarily_unavailable"
    status_code = 503
    description = "The service is temporarily unavailable; retry later."
    reason = "temporarily_unavailable"
    retry_after_seconds = 2

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class InvalidDpopProof(BrokerError):
    """RFC 9449 §5: the DPoP proof is missing where required, malformed, or fails a check."""

    error = "invalid_dpop_proof"
    status_code = 400
    description = "The DPoP proof is invalid."
    reason = "invalid_dpop_proof"


class UseDpopNonce(BrokerError):
    """RFC 9449 §8: the proof must carry the nonce in the DPoP-Nonce header; retry with it."""

    error = "use_dpop_nonce"
    status_code = 400
    description = "Authorization server requires nonce in DPoP proof."
    reason = "use_dpop_nonce"

    def __init__(self, nonce: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.nonce = nonce

    def headers(self) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonce}


# -- human approval (broker/domain/approvals.py): the device-flow and CIBA polling answers
# (RFC 8628 §3.5, OpenID CIBA §11). All 400 with OAuth codes; the body also carries
# `response_fields` (the approval id and the polling interval).
class AuthorizationPending(BrokerError):
    error = "authorization_pending"
    status_code = 400
    description = "A person must approve this request; poll again with approval_id."
    reason = "approval_required"

    def __init__(self, approval_id: str, interval: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.response_fields = {"approval_id": approval_id, "interval": interval}


class SlowDown(AuthorizationPending):
    error = "slow_down"
    description = "Polled too fast: wait the interval between polls."
    reason = "slow_down"


class ExpiredToken(BrokerError):
    error = "expired_token"
    status_code = 400
    description = "The approval expired; ask again."
    reason = "approval_expired"


class ApprovalDenied(BrokerError):
    error = "access_denied"
    status_code = 400
    description = "A person denied this request."
    reason = "approval_denied"


class DpopTokenRefused(BrokerError):
    """RFC 9449 §7.1, §9, §12.2: our DPoP-bound access token, presented to one of our own
    endpoints as the caller's credential, without a valid proof of its key. 401 with a `DPoP`
    challenge naming the error and the accepted algorithms; `use_dpop_nonce` also carries the
    nonce to put in the next proof."""

    status_code = 401
    error = "invalid_token"
    description = "The access token is DPoP-bound: present it with a DPoP proof."
    reason = "dpop_bound_token"

    def __init__(
        self,
        description: str,
        *,
        error: str,
        algs: tuple[str, ...],
        reason: str,
        nonce: str | None = None,
    ) -> None:
        super().__init__(description, reason=reason)
        self.error = error
        self.algs = algs
        self.nonce = nonce

    def headers(self) -> dict[str, str]:
        said = self.description.replace("\\", "").replace('"', "'")  # a quoted-string
        challenge = (
            f'DPoP error="{self.error}", error_description="{said}", algs="{" ".join(self.algs)}"'
        )
        out = {"WWW-Authenticate": challenge}
        if self.nonce is not None:
            out["DPoP-Nonce"] = self.nonce
        return out
