"""Fixed-window counters in Redis for the token endpoint's abuse limits.

A counter is one INCR on a key that expires with its window, so limits hold across every
broker node. Counters are keyed by client address, by configured issuer id (before the
signature is checked: never by a claimed identity, which an attacker could lock out) and
by verified identity (after the signature)."""

from __future__ import annotations

import redis
from redis.exceptions import RedisError

from broker.domain.ports import StoreUnavailable
from broker.store import keys

# KEYS: counter. ARGV: window seconds, limit. Returns {count, ttl}.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""


class RedisLimits:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._hit = client.register_script(_HIT)

    def hit(self, kind: str, value: str, *, window_seconds: int) -> tuple[int, int]:
        """Count one event; returns (events in the current window, seconds until it resets)."""
        try:
            n, ttl = self._hit(keys=[keys.rate_counter(kind, value)], args=[window_seconds])
        except RedisError as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
        return int(n), max(int(ttl), 1)

    def peek(self, kind: str, value: str) -> int:
        try:
            return int(self._r.get(keys.rate_counter(kind, value)) or 0)
        except RedisError as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
