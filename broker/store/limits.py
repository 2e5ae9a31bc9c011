"""Fixed-window counters in Redis for the token endpoint's abuse limits.

A counter is one INCR on a key that expires with its window, so limits hold across every
broker node. Counters are keyed by client address, by configured issuer id (before the
signature is checked: never by a claimed identity, which an attacker could lock out) and
by verified identity (after the signature)."""

from __future__ import annotations

import redis

from broker.store import keys, lua_scripts
from broker.store.connection import is_cluster, store_errors


class RedisLimits:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._hit_many = client.register_script(lua_scripts.HIT_MANY)

    @store_errors()
    def hit_many(
        self, counters: list[tuple[str, str]], *, window_seconds: int
    ) -> list[tuple[int, int]]:
        """Count one event on each (kind, value) counter in one round trip (lua/hit_many.lua);
        returns, per counter, (events in the current window, seconds until it resets)."""
        counter_keys = [keys.rate_counter(kind, value) for kind, value in counters]
        if is_cluster(self._r):
            # The counters sit in different slots: one script each (no atomicity is needed:
            # lua/hit_many.lua says why a partial count is safe).
            results = []
            for key in counter_keys:
                results += self._hit_many(keys=[key], args=[window_seconds])
        else:
            results = self._hit_many(keys=counter_keys, args=[window_seconds])
        return [(int(results[i]), max(int(results[i + 1]), 1)) for i in range(0, len(results), 2)]

    def hit(self, kind: str, value: str, *, window_seconds: int) -> tuple[int, int]:
        return self.hit_many([(kind, value)], window_seconds=window_seconds)[0]
