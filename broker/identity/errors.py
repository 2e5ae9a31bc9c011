"""Why a workload token was refused. Messages are safe to show; `debug` is audit-only."""

from __future__ import annotations


class VerificationError(Exception):
    reason = "invalid_subject_token"

    def __init__(self, message: str, *, debug: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.debug = debug
        if reason:
            self.reason = reason


class MalformedToken(VerificationError):
    reason = "malformed_token"


class UnknownIssuer(VerificationError):
    reason = "unknown_issuer"


class UnknownKey(VerificationError):
    reason = "unknown_key"


class BadSignature(VerificationError):
    reason = "bad_signature"


class ClaimInvalid(VerificationError):
    reason = "claim_invalid"


class Replayed(VerificationError):
    reason = "replayed"


class KeysUnavailable(VerificationError):
    """The issuer's keys cannot be fetched and no usable cached copy exists: retryable."""

    reason = "issuer_keys_unavailable"
