"""svc.store: the one object through which the domain reaches grants, identity state and the
audit stream (the GrantStore port, domain/inventory.py's InventoryStore, AuditLog's
appender), plus the health checks of the Redis behind them.

Each concept lives in its own module; this class only puts them together:
- store/grants.py           the epoch, preflight, the grant write, revocation, completion, sweep
- store/inventory_state.py  suspension and offboarding, last exchanges, live-grant counts
- store/audit_stream.py     the bounded audit stream
- store/connection.py       connect() and the one translation of a RedisError
- store/cluster_grants.py   on Redis Cluster: the multi-slot steps as single-slot sequences
Revoke-all, the revocation feed and signed records are store/revocations.py; rate counters
store/limits.py; the JWKS mirror store/jwks_mirror.py."""

from __future__ import annotations

from redis.exceptions import ResponseError

from broker.domain.ports import StoreUnavailable
from broker.store.cluster_grants import ClusterGrants
from broker.store.connection import store_errors
from broker.store.grants import RedisGrants
from broker.store.inventory_state import RedisInventoryState


class RedisGrantStore(RedisGrants, RedisInventoryState):
    @store_errors()
    def ping(self) -> bool:
        return bool(self._r.ping())

    def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy, or None when Redis is down or refuses CONFIG GET."""
        try:
            with store_errors():
                value = self._r.config_get("maxmemory-policy").get("maxmemory-policy")
        except (StoreUnavailable, ResponseError):
            return None
        return str(value) if value is not None else None


class ClusterGrantStore(ClusterGrants, RedisGrantStore):
    """The same store on Redis Cluster: the grant write, preflight, completion and
    revocation as single-slot steps (store/cluster_grants.py)."""
