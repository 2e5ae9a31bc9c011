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


class RedisLimits:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def hit_many(
        self, counters: list[tuple[str, str]], *, window_seconds: int
    ) -> list[tuple[int, int]]:
        """Count one event on each (kind, value) counter in one round trip; returns, per
        counter, (events in the current window, seconds until it resets)."""
        try:
            pipe = self._r.pipeline(transaction=False)
            for kind, value in counters:
                key = keys.rate_counter(kind, value)
                pipe.set(key, 0, ex=window_seconds, nx=True)  # starts a fixed window
                pipe.incr(key)  # keeps the window's TTL
                pipe.ttl(key)
            results = pipe.execute()
        except RedisError as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
        return [
            (int(results[i + 1]), max(int(results[i + 2]), 1)) for i in range(0, len(results), 3)
        ]

    def hit(self, kind: str, value: str, *, window_seconds: int) -> tuple[int, int]:
        return self.hit_many([(kind, value)], window_seconds=window_seconds)[0]
