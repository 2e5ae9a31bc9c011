"""The cross-process JWKS mirror, refresh lock and fetch state (see broker/identity/jwks.py).

Keys (broker/store/keys.py):
- `keys.jwks(issuer)`: hash {doc, at}, the last good JWKS and when it was fetched; TTL
  `jwks_stale_seconds`.
- `keys.jwks_lock(issuer)`: at most one fetch per issuer per cooldown, across every node
  (SET NX EX cooldown). Its value says how the fetch of this cooldown is going:
  `fetching` (set by the winner in the same command that takes the lock, so there is no
  moment when the lock is held and nobody is known to fetch), `failed` (the fetch failed:
  the failure record, which lives for the cooldown) or `done`.

A worker that loses the lock on a cold cache waits only while the value is `fetching` and
the lock is younger than the fetch deadline (read from its PTTL: Redis's clock, not the
nodes'), so a holder that died mid-fetch costs a waiter at most that deadline, and an issuer
that is down costs every worker a quick 503 until the cooldown ends."""

from __future__ import annotations

import redis

from broker.identity.jwks import FetchState
from broker.store import keys
from broker.store.connection import store_errors

FETCHING = "fetching"
FAILED = "failed"
DONE = "done"


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class JwksMirror:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    @store_errors()
    def load(self, issuer_id: str) -> tuple[str, float] | None:
        doc, at = (_text(v) for v in self._r.hmget(keys.jwks(issuer_id), "doc", "at"))
        if not doc or not at:
            return None
        return doc, float(at)

    @store_errors()
    def store(self, issuer_id: str, jwks_json: str, fetched_at: float, ttl_seconds: int) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(keys.jwks(issuer_id), mapping={"doc": jwks_json, "at": repr(fetched_at)})
        pipe.expire(keys.jwks(issuer_id), ttl_seconds)
        # No longer in flight; the lock keeps its TTL, so the cooldown is unchanged.
        pipe.set(keys.jwks_lock(issuer_id), DONE, xx=True, keepttl=True)
        pipe.execute()

    @store_errors()
    def try_lock_refresh(self, issuer_id: str, cooldown_seconds: int) -> bool:
        """Take the refresh lock and mark the fetch in flight, in one command."""
        lock = keys.jwks_lock(issuer_id)
        return bool(self._r.set(lock, FETCHING, nx=True, ex=cooldown_seconds))

    @store_errors()
    def mark_in_flight(self, issuer_id: str, cooldown_seconds: int) -> None:
        """A fetch that may skip the lock (after a reload changed the key source) still
        tells the others it is under way, and restarts the cooldown."""
        self._r.set(keys.jwks_lock(issuer_id), FETCHING, ex=cooldown_seconds)

    @store_errors()
    def record_failure(self, issuer_id: str, cooldown_seconds: int) -> None:
        """Every worker fails fast on a cold cache until the cooldown ends."""
        self._r.set(keys.jwks_lock(issuer_id), FAILED, ex=cooldown_seconds)

    @store_errors()
    def fetch_state(
        self, issuer_id: str, cooldown_seconds: int, fetch_deadline_seconds: float
    ) -> FetchState:
        pipe = self._r.pipeline(transaction=False)
        pipe.get(keys.jwks_lock(issuer_id))
        pipe.pttl(keys.jwks_lock(issuer_id))
        raw_value, pttl = pipe.execute()
        value = _text(raw_value)
        if value == FAILED:
            return "failed"
        if value == FETCHING and isinstance(pttl, int) and pttl > 0:
            age_ms = cooldown_seconds * 1000 - pttl
            if age_ms < fetch_deadline_seconds * 1000:
                return "in_flight"
        return "idle"

    @store_errors()
    def forget(self, issuer_id: str) -> None:
        """Drop the mirrored keys and the fetch state of a key source a reload replaced."""
        self._r.delete(keys.jwks(issuer_id), keys.jwks_lock(issuer_id))
