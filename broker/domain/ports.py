"""The seams between the domain and the outside world, as Protocols, and the Services bundle
that carries one implementation of each (broker/services.py builds it).

Each port is as narrow as the code that calls it; one store object may implement several
(the grant store is also the inventory store). What only a process needs (Redis clients, the
JWKS cache, settings, the reloader) is not here: see broker/runtime.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from broker.domain.models import Config, Grant, GrantState, TrustedIssuer, VerifiedSubject
from broker.errors import TemporarilyUnavailable
from broker.policy.matcher import Match, Miss
from broker.tokens.keyring import SigningKey


class StoreUnavailable(TemporarilyUnavailable):
    """Redis is unreachable, read-only, loading or out of memory: fail closed, retryable.

    It is the client's 503 (`temporarily_unavailable`, Retry-After) wherever nobody handles
    it on purpose, so no caller translates it; code that must not fail on it (rate limits,
    audit appends) catches it. The store's detail is `str()` and `debug`: logs and audit
    only, never the client's description."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(debug=detail or None)

    def __str__(self) -> str:
        return self.debug or self.description


class WriteRefused(Exception):
    """An atomic write refused; `reason` says why.

    Grant write (store/lua/save_grant.lua): task_completed, task_foreign, identity_blocked,
    quota_exceeded, epoch_changed, replayed. Task completion: task_foreign."""

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

    def audit_events(
        self,
        *,
        task_id: str | None,
        limit: int,
        where: Mapping[str, str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]: ...


class InventoryStore(Protocol):
    """What an operator decided about identities at run time (domain/inventory.py)."""

    def identity_state(self, identity_id: str) -> dict[str, Any] | None: ...

    def identity_states(self) -> dict[str, dict[str, Any]]: ...

    def set_identity_state(
        self, identity_id: str, record: Mapping[str, Any] | None, *, audit: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...

    def identity_grant_ids(self, identity_id: str) -> list[str]: ...

    def live_grant_counts(self, identity_ids: list[str], *, now: int) -> dict[str, int]: ...

    def last_exchanges(self) -> dict[str, float]: ...


class FeedPage(Protocol):
    @property
    def cursor(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    @property
    def entries(self) -> list[dict[str, Any]]: ...

    @property
    def more(self) -> bool: ...


class RevocationStore(Protocol):
    """Revoke-all, bulk revocation, the revocation feed and signed revocation records."""

    def revoke_all(self, *, now: int, audit: Mapping[str, Any]) -> tuple[int, int]: ...

    def fanout_batch(self, epoch: int, offset: int, batch: int) -> tuple[int, int, int]: ...

    def record_fanout_progress(self, epoch: int, fields: Mapping[str, Any]) -> None: ...

    def fanout_progress(self, epoch: int) -> dict[str, str]: ...

    def pending_fanouts(self, older_than: float) -> list[int]: ...

    def index_key(self, kind: str, value: str) -> str: ...

    def index_members(self, index_key: str, batch: int) -> list[str]: ...

    def live_grant_page(self, offset: int, batch: int) -> list[str]: ...

    def revoke_many(
        self, jtis: list[str], *, publish_each: bool, issuer_id: str = "", index: str | None = None
    ) -> int: ...

    def valid_cursor(self, cursor: str) -> bool: ...

    def read_feed(self, since: str, *, limit: int, now: int, margin: int = 60) -> FeedPage: ...

    def trim_feed(self, older_than_seconds: int, now: int) -> None: ...

    def append_evidence(self, record_id: str, jws: str) -> None: ...

    def list_evidence(self, limit: int) -> list[dict[str, str]]: ...


class RateLimiter(Protocol):
    """Fixed-window counters: (events in the current window, seconds until it resets)."""

    def hit_many(
        self, counters: list[tuple[str, str]], *, window_seconds: int
    ) -> list[tuple[int, int]]: ...

    def hit(self, kind: str, value: str, *, window_seconds: int) -> tuple[int, int]: ...


class AuthFailureCounter(Protocol):
    """Failed client and admin authentications per client address."""

    def failures(self, address: str) -> tuple[int, int]: ...

    def note_failure(
        self, address: str, *, window_seconds: int, gate_seconds: int
    ) -> tuple[int, int, bool]: ...


class AuditSink(Protocol):
    def record(self, event: Mapping[str, Any], *, stored: bool = False) -> None:
        """Log the event; also append it to the audit stream unless `stored` already did."""


class JobScheduler(Protocol):
    def schedule_task_cleanup(self, task_id: str) -> None: ...

    def schedule_fanout(self, epoch: int) -> None: ...

    def schedule_sweep(self) -> None: ...


class SigningKeys(Protocol):
    """Our signing key and the verification keys still published (files or Redis)."""

    @property
    def active(self) -> SigningKey: ...

    def get(self, kid: str) -> SigningKey | None: ...

    def jwks(self) -> dict[str, Any]: ...

    def all_public_keys(self) -> dict[str, Any]: ...


class RotatingKeys(SigningKeys, Protocol):
    """Signing keys kept in Redis, which can be rotated while running."""

    @property
    def publish_lead_seconds(self) -> int: ...

    def rotate(self, *, emergency: bool = False) -> dict[str, Any]: ...

    def due_for_rotation(self, rotation_days: float) -> bool: ...

    def status(self) -> list[dict[str, Any]]: ...


class SubjectVerifier(Protocol):
    def verify(
        self,
        token: str,
        *,
        now: float,
        on_issuer: Callable[[TrustedIssuer], None] | None = None,
    ) -> VerifiedSubject:
        """Raises VerificationError. Calls `on_issuer(issuer)` once the token's issuer is
        chosen and before any key fetch or signature work: the exchange reads the revoke-all
        epoch and counts its rate limits there."""


class IdentityMatcher(Protocol):
    def match(self, issuer_id: str, claims: Mapping[str, Any]) -> Match | Miss: ...


class Clock(Protocol):
    def now(self) -> float: ...


@dataclass(eq=False)
class Services:
    """Everything the domain needs, built once per process by broker/services.py.

    `verifier`, `matcher` and `config` are replaced together by a configuration reload
    (broker/reload.py), between requests."""

    config: Config
    keyring: SigningKeys
    rotating_keys: RotatingKeys | None  # the same keys when they live in Redis; None: files
    verifier: SubjectVerifier
    matcher: IdentityMatcher
    store: GrantStore
    inventory: InventoryStore
    revocations: RevocationStore
    limiter: RateLimiter
    auth_failures: AuthFailureCounter
    audit: AuditSink
    jobs: JobScheduler
    clock: Clock
