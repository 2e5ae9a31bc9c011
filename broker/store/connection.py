"""Every Redis client the processes make, and the one place a Redis fault becomes
StoreUnavailable.

Fail closed (docs/security-model.md): whatever Redis answers with, unreachable, read-only, loading,
out of memory or a script error, the caller gets StoreUnavailable and the HTTP layer a 503
with Retry-After, never a half-answer.

connect() is the one factory: the web process's decoded client, RQ's raw client and the
workers' all come from it, so they share the short timeouts, the retry policy and the way
Redis is found: one URL, or the Sentinels that name the current primary. Behind Sentinel a
client follows a failover without a restart:
- a new connection asks the Sentinels which node is primary;
- a connection to a demoted primary gets READONLY on its next write; redis-py's
  SentinelManagedConnection turns that into a ConnectionError and drops the connection, and
  the one retry below reconnects, through the Sentinels (_FollowingConnection), to the
  primary they now name;
- a demoted primary that nobody has reconfigured yet still accepts writes (Sentinel waits
  several seconds before it converts the old primary) and replicates them to no one, so a
  client also asks the Sentinels again at most every MASTER_CHECK_SECONDS, and at once when
  a WAIT falls short, and drops idle connections to a node that is no longer primary.
While the Sentinels name no reachable primary, every call fails with a ConnectionError
(MasterNotFoundError among them): StoreUnavailable, a 503.

On Redis Cluster (RedisLocation.cluster_nodes) the client is redis-py's RedisCluster: it
learns the slot map from any seed node, follows MOVED and ASK redirections (a resharding)
and, after a primary failover, refreshes the map and retries on the promoted replica. Its
retries are the same as above: a connection error, a cluster that is down or a slot not
covered, a few times; never a timeout. Every script and MULTI it sends must keep to one slot
(broker/store/keys.py); redis-py refuses one that does not before sending it, so a
cross-slot step fails whole (StoreUnavailable), never half-done.

ReplicaWait puts WAIT after the writes that must survive a failover."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import ClusterDownError, NoScriptError, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from broker.domain.audit_failure import AuditUnavailable
from broker.domain.ports import StoreUnavailable
from broker.metrics import count_audit_write_failure
from broker.settings import Settings, SettingsError
from broker.store import keys

log = logging.getLogger(__name__)

# How often a Sentinel-managed client asks the Sentinels which node is primary, besides
# every new connection: bounds how long it keeps writing to a demoted primary.
MASTER_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class RedisLocation:
    """Where Redis is: a URL, or a service that Sentinels monitor (broker/settings.py)."""

    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password_file: Path | None = None
    sentinel_password_file: Path | None = None
    cluster_nodes: tuple[tuple[str, int], ...] = ()  # seed nodes of a Redis Cluster
    cluster_tls: bool = False

    @classmethod
    def of(cls, settings: Settings) -> RedisLocation:
        return cls(
            url=settings.redis_url,
            cluster_nodes=settings.redis_cluster_nodes,
            cluster_tls=settings.redis_url.startswith("rediss"),
            sentinels=settings.redis_sentinels,
            service=settings.redis_sentinel_service,
            db=settings.redis_db,
            password_file=settings.redis_password_file,
            sentinel_password_file=settings.redis_sentinel_password_file,
        )


def connect(where: str | RedisLocation, *, timeout: float, decode: bool = True) -> redis.Redis:
    """A client with short timeouts, so an outage is a quick 503, not a hung worker.

    Only ConnectionError is retried, once: a refused or dropped connection, or READONLY
    from a demoted primary behind Sentinel, where the retry reaches the new primary. A
    timeout is not retried: the command may have run, and running a write twice is not
    the same as running it once."""
    location = RedisLocation(url=where) if isinstance(where, str) else where
    password = _secret(location.password_file, "ERRAND_REDIS_PASSWORD_FILE")
    options: dict[str, Any] = {
        "decode_responses": decode,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "retry": Retry(
            ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=(RedisConnectionError,)
        ),
    }
    if password is not None:
        options["password"] = password
    if location.cluster_nodes:
        return _cluster(location, options)
    if not location.sentinels:
        return redis.Redis.from_url(location.url, **options)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(location.sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Each Sentinel is asked in turn: one that does not answer is skipped, not retried.
            "retry": Retry(NoBackoff(), 0),
            "password": _secret(
                location.sentinel_password_file, "ERRAND_REDIS_SENTINEL_PASSWORD_FILE"
            ),
        },
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        location.service,
        connection_pool_class=_FollowingPool,
        connection_class=_FollowingConnection,
        db=location.db,
        **options,
    )
    return client


class _Cluster(RedisCluster):
    """RedisCluster retrying what connect() retries: not a timeout (the command may have run;
    a write run twice is not a write run once)."""

    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


def _cluster(location: RedisLocation, options: dict[str, Any]) -> redis.Redis:
    options = dict(options)
    options.pop("health_check_interval", None)
    # A few attempts, backing off: enough to ride out a MOVED storm or a reconnect, short
    # enough that a cluster without a primary for a slot is a quick 503.
    options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)
    client = _Cluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in location.cluster_nodes
        ],
        ssl=location.cluster_tls,
        **options,
    )
    return client  # type: ignore[return-value]  # the commands the stores use, same shape


def is_cluster(client: Any) -> bool:
    """Whether `client` talks to a Redis Cluster (scripts and MULTI then keep to a slot)."""
    return isinstance(client, RedisCluster)


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that also asks the Sentinels, at most every MASTER_CHECK_SECONDS,
    whether the primary moved; when it did, idle connections to the old one are dropped
    (SentinelConnectionPool.get_master_address) and busy ones when they come back."""

    _checked_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= MASTER_CHECK_SECONDS:
            self._checked_at = now
            follow_primary(self)
        return super().get_connection(*args, **kwargs)


class _FollowingConnection(SentinelManagedConnection):
    """A connection that, whenever it opens a socket, opens it to the primary the Sentinels
    name. redis-py (8.1) reconnects inside a command's retry without asking them again, so
    the retry after READONLY would go straight back to the demoted primary."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]  # asks the Sentinels
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def follow_primary(pool: Any) -> None:
    """Ask the Sentinels now which node is primary (no-op for a plain client). Sentinels
    that cannot answer change nothing: the connections in hand are kept, and the next new
    connection asks again."""
    if isinstance(pool, SentinelConnectionPool):
        try:
            pool.get_master_address()  # type: ignore[no-untyped-call]
        except RedisError as err:  # MasterNotFoundError, auth refused, …
            log.debug("sentinel check failed: %s", err)


@dataclass(frozen=True)
class ReplicaWait:
    """WAIT numreplicas timeout, on the same connection, after a write that must survive a
    failover (Redis replicates asynchronously: a write the primary acknowledged is lost if the
    primary fails before a replica has it, and a replica is then promoted).

    A grant write waits and fails closed: a token leaves only when its grant is on the
    replicas, or the caller gets 503. Revocation, completion and revoke-all wait and answer
    anyway, with a warning: they already hold on the primary that every node reads, a 503
    would not undo them, and revocation must keep working while a replica is down."""

    replicas: int = 0  # 0: no WAIT
    timeout_ms: int = 100

    @classmethod
    def of(cls, settings: Settings) -> ReplicaWait:
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

    def run(
        self,
        script: Script,
        *,
        keys: Sequence[str],
        args: Sequence[str | int],
        what: str,
        fail_closed: bool = False,
    ) -> Any:
        """Run a registered write script and, when asked, WAIT right after it. WAIT counts the
        writes of its own connection only, so both go in one pipeline (one connection)."""
        if not self.replicas:
            return script(keys=keys, args=args)
        client: Any = script.registered_client  # the client the store registered it on
        try:
            result, acked = self._pipelined(client, script.sha, keys, args)
        except NoScriptError:
            # A restarted or newly promoted Redis: the script did not run; load it, once.
            script.sha = client.script_load(script.script)
            result, acked = self._pipelined(client, script.sha, keys, args)
        if int(acked) >= self.replicas:
            return result
        # Too few replicas have it: a failover may be under way, so look for the primary now.
        follow_primary(client.connection_pool)
        message = (
            f"redis WAIT: {what} reached {int(acked)} of {self.replicas} replica(s) within "
            f"{self.timeout_ms} ms"
        )
        if fail_closed:
            raise StoreUnavailable(message)
        log.warning("%s; it holds on the primary but a failover now could lose it", message)
        return result

    def _pipelined(
        self, client: Any, sha: str, keys: Sequence[str], args: Sequence[str | int]
    ) -> list[Any]:
        # EVALSHA itself, not the Script: a pipeline would first ask SCRIPT EXISTS, one more
        # round trip than the WAIT costs.
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.wait(self.replicas, self.timeout_ms)
        return list(pipe.execute())


NO_WAIT = ReplicaWait()


def _secret(path: Path | None, name: str) -> str | None:
    """A password from its file (trailing newline and spaces trimmed)."""
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise SettingsError(f"cannot read {name} ({path}): {err.strerror or err}") from err
    if not value:
        raise SettingsError(f"{name} ({path}) is empty")
    return value


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn any RedisError into StoreUnavailable. A context manager, or a decorator:
    `@store_errors()` on a method guards its whole body."""
    try:
        yield
    except RedisError as err:
        if is_audit_refusal(err):
            count_audit_write_failure("script", "refused")
            raise AuditUnavailable(f"{type(err).__name__}: {err}") from err
        raise StoreUnavailable(f"{type(err).__name__}: {err}") from err


def is_audit_refusal(err: RedisError) -> bool:
    """A script refused a change because the audit stream cannot take its event: the
    prelude's audit_refusal, or a script's own type check naming the audit stream."""
    text = str(err)
    return "ERRAND_AUDIT " in text or f"{keys.AUDIT_STREAM} holds a " in text
