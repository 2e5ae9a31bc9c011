"""The seams between the domain and the outside world, as Protocols, and the Services bundle
that carries one implementation of each (broker/services.py builds it).

Each port is as narrow as the code that calls it; one store object may implement several
(the grant store is also the inventory store). What only a process needs (Redis clients, the
JWKS cache, settings, the reloader) is not here: see broker/runtime.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.domain.models import Config, Grant, GrantState, TrustedIssuer, VerifiedSubject
from broker.domain.tasks import TaskRecord, TaskSpec, TransitionResult
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

    Grant write (store/lua/save_grant.lua): task_completed, task_foreign, task_suspended,
    task_expired, task_spec_mismatch, task_deadline, identity_blocked, quota_exceeded,
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
    task_suspended: bool = False  # the task is suspended: no new grants until it resumes
    task_deadline: int | None = None  # the task's hard deadline, if it has one


class TaskStore(Protocol):
    """A task's lifecycle (domain/task_lifecycle.py, store/task_lifecycle.py)."""

    def transition_task(
        self,
        task_id: str,
        *,
        target: str,
        identity_id: str | None,
        audit: Mapping[str, Any],
        now: int,
        tombstone_seconds: int,
        suspension_seconds: int,
        feed_expiry: int,
        skew_seconds: int,
    ) -> TransitionResult: ...

    def task_record(self, task_id: str, *, now: int, limit: int) -> TaskRecord | None: ...

    def task_terminal_state(self, task_id: str) -> str | None: ...


class GrantStore(TaskStore, Protocol):
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
        task: TaskSpec | None = None,
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


class ChainStore(Protocol):
    """Delegation hops (RFC 8693 actor_token; domain/delegation.py, store/chains.py)."""

    def save_hop(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int = 0,
    ) -> None:
        """The hop's grant under its parent, atomically, or WriteRefused: the grant write's
        reasons plus subject_inactive (a link above is gone) and subject_blocked."""

    def links_live(self, jtis: tuple[str, ...]) -> bool:
        """Whether every one of these grants (a hop's ancestors) is still stored."""


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


class DpopReplayCache(Protocol):
    """DPoP proof jtis already used, per key (RFC 9449 §11.1), shared by every node."""

    def claim_dpop_jti(self, jkt: str, jti: str, expires_at: int) -> bool:
        """True if this (key, jti) was unused and is now spent until `expires_at`."""


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
    def record(
        self, event: Mapping[str, Any], *, stored: bool = False, required: bool = False
    ) -> None:
        """Log the event; also append it to the audit stream unless `stored` already did.
        `required`: raise AuditUnavailable (domain/audit_failure.py) when it cannot."""


class JobScheduler(Protocol):
    def schedule_task_cleanup(self, task_id: str) -> None: ...

    def schedule_fanout(self, epoch: int) -> None: ...

    def schedule_sweep(self) -> None: ...

    def schedule_approval_notice(self, approval_id: str) -> None: ...


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
        token_endpoint_audience: bool = False,
    ) -> VerifiedSubject:
        """Raises VerificationError. Calls `on_issuer(issuer)` once the token's issuer is
        chosen and before any key fetch or signature work: the exchange reads the revoke-all
        epoch and counts its rate limits there. `token_endpoint_audience` (jwt-bearer): an
        `aud` of the token endpoint URL is accepted too (RFC 7523 §3)."""


class IdentityMatcher(Protocol):
    def match(self, issuer_id: str, claims: Mapping[str, Any]) -> Match | Miss: ...


class Clock(Protocol):
    def now(self) -> float: ...


class Tracer(Protocol):
    """Spans around the exchange's steps. The OpenTelemetry adapter (broker/tracing_otel.py)
    lives outside the domain, which imports no tracing library."""

    def span(self, name: str) -> AbstractContextManager[object]: ...


class NoTracer:
    """The default: no spans; a step costs one call returning a shared null context."""

    _NULL: AbstractContextManager[object] = nullcontext()

    def span(self, name: str) -> AbstractContextManager[object]:
        return self._NULL


NO_TRACER = NoTracer()


@dataclass(frozen=True)
class Approval:
    """A request a person must approve (docs/policy.md, "Approval"), bound to exactly this
    identity, task, audiences and scopes. state: pending | approved | denied | issued."""

    id: str
    state: str
    identity_id: str
    owner: str
    task_id: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    purpose: str
    created_at: int
    expires_at: int
    interval: int
    policies: tuple[str, ...] = ()  # the forbids a person can lift
    approver: str = ""
    reason: str = ""
    decided_at: int = 0


class GrantContracts(Protocol):
    """The audiences and contract versions live grants were issued under
    (store/contract_grants.py): jti -> (audiences, {audience: version})."""

    def contracts(self, jtis: list[str]) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]: ...


class ApprovalStore(Protocol):
    """Approvals in Redis (store/approvals.py); each state change is one atomic step."""

    def create(self, approval: Approval) -> None: ...

    def get(self, approval_id: str) -> Approval | None: ...

    def poll(self, approval_id: str, *, now: int, interval: int) -> tuple[str, bool]:
        """(state, too soon since the last poll); state "" when it is gone."""

    def decide(self, approval_id: str, *, state: str, approver: str, reason: str, now: int) -> str:
        """'ok', or why not: missing, expired, self_approval, or the state it is in."""

    def consume(self, approval_id: str, *, now: int) -> str:
        """'ok' (approved, now issued), or why not."""

    def pending(self, *, now: int, limit: int) -> list[Approval]: ...


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
    dpop_replay: DpopReplayCache
    chains: ChainStore  # delegation hops: the same Redis, its own scripts
    approvals: ApprovalStore | None = None  # human approval (runtime policy); None: not wired
    tracer: Tracer = field(default=NO_TRACER, kw_only=True)  # spans only with an OTLP endpoint
