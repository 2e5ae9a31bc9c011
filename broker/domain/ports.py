"""The seams between the domain and the outside world, as Protocols."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from broker.domain.models import Grant, GrantState


class StoreUnavailable(Exception):
    """Redis is unreachable, read-only, loading or out of memory: fail closed, retryable."""


class WriteRefused(Exception):
    """An atomic write refused; `reason` says why.

    Grant write: task_foreign, task_completed, identity_blocked, quota_exceeded,
    epoch_changed, replayed. Task completion: task_foreign."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreflightState:
    epoch: int
    replayed: bool
    task_completed: bool
    identity_state: dict[str, Any] | None = None  # suspension/offboarding record, if any
    identity_requests: int = 0  # exchanges by the identity in the current rate window
    identity_window_reset: int = 0  # seconds until that window resets
    task_owner: str | None = None  # the identity that opened the task, if it is open


class GrantStore(Protocol):
    def current_epoch(self) -> int: ...

    def preflight(
        self,
        *,
        issuer_id: str,
        jti: str | None,
        task_id: str,
        identity_id: str | None = None,
        rate_window_seconds: int = 0,
    ) -> PreflightState: ...

    def save_grant(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int = 0,
    ) -> None: ...

    def grant_state(self, jti: str, task_id: str) -> GrantState: ...

    def revoke_grant(self, jti: str, *, audit: Mapping[str, Any]) -> tuple[str, str] | None: ...

    def complete_task(
        self,
        task_id: str,
        *,
        identity_id: str,
        tombstone_seconds: int,
        audit: Mapping[str, Any],
        now: int,
        skew_seconds: int = 60,
    ) -> bool: ...

    def task_grant_ids(self, task_id: str) -> list[str]: ...

    def finish_task_cleanup(self, task_id: str) -> None: ...

    def stale_completions(self, older_than: float) -> list[str]: ...

    def sweep_expired(self, *, now: int, batch: int) -> int: ...

    def list_grants(
        self,
        *,
        now: int,
        task_id: str | None,
        identity_ids: list[str] | None,
        limit: int,
    ) -> list[Grant]: ...

    def audit_events(self, *, task_id: str | None, limit: int) -> list[dict[str, Any]]: ...


class AuditSink(Protocol):
    def record(self, event: Mapping[str, Any], *, stored: bool = False) -> None:
        """Log the event; also append it to the audit stream unless `stored` already did."""


class JobScheduler(Protocol):
    def schedule_task_cleanup(self, task_id: str) -> None: ...


class SubjectVerifier(Protocol):
    def verify(self, token: str, *, now: float, on_issuer: Any = None) -> Any:
        """Raises VerificationError. Calls `on_issuer(issuer)` once the token's issuer is
        chosen and before any key fetch or signature work: the exchange reads the revoke-all
        epoch and counts its rate limits there."""


class Clock(Protocol):
    def now(self) -> float: ...


@dataclass
class Services:
    """Everything the domain needs, built once per process by broker/services.py."""

    config: Any  # broker.domain.models.Config
    keyring: Any  # broker.tokens.keyring.KeyRing
    verifier: SubjectVerifier
    matcher: Any  # broker.policy.matcher.IdentityMatcher
    store: GrantStore
    audit: AuditSink
    jobs: JobScheduler
    clock: Clock
    extras: dict[str, Any]  # process-level handles (redis clients, jwks cache) for health/metrics
    revocations: Any = None  # broker.store.revocations.RedisRevocationStore
    limits: Any = None  # broker.store.limits.RedisLimits (rate counters)
