"""Runtime: one process's Services plus what only the process uses.

The domain takes `Services` (broker/domain/ports.py) and never sees what is added here: the
Redis clients (the worker's RQ connection, its locks), the JWKS cache a configuration reload
must prune, the settings the process started with, the store's health checks and the
configuration reloader. broker/services.py builds it; the web app keeps it in
`app.extensions["errand"]` and each worker process builds one (workers/context.py).

A Runtime *is* the Services it carries, so whatever takes Services (the domain, tests,
scripts) takes a Runtime as it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from redis import Redis

from broker.domain.ports import Services
from broker.identity.jwks import JwksCache
from broker.settings import Settings
from broker.store.gauges import RedisGauges


class StoreHealth(Protocol):
    """What /readyz and the start-up check ask of Redis (broker/store/redis.py)."""

    def ping(self) -> bool: ...

    def eviction_policy(self) -> str | None: ...


class Reloader(Protocol):
    """The configuration reloader of a web process (broker/reload.py)."""

    @property
    def status(self) -> Mapping[str, Any]: ...

    def maybe_reload(self) -> None: ...

    def reload_now(self) -> dict[str, Any]: ...

    def request_reload(self) -> None: ...


class ConsoleSessionStore(Protocol):
    """Web-console sessions, by the digest of their id (broker/store/console_sessions.py)."""

    def create(self, digest: str, record: Mapping[str, str], *, ttl_seconds: int) -> None: ...

    def touch(self, digest: str, *, now: float, ttl_seconds: int) -> dict[str, str] | None: ...

    def delete(self, digest: str) -> None: ...


@dataclass(eq=False, kw_only=True)
class Runtime(Services):
    settings: Settings
    redis: Redis  # decoded responses: locks and checks outside the stores
    rq_redis: Redis  # bytes, as RQ needs
    jwks: JwksCache  # issuers' keys, shared by every verifier this process builds
    health: StoreHealth
    gauges: RedisGauges  # scrape-time readings and the worker heartbeat (docs/observability.md)
    reloader: Reloader | None = None  # web processes whose configuration came from a file
    console_sessions: ConsoleSessionStore | None = None  # the web console's (broker/http/console)
