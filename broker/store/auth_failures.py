"""Failed client and admin authentications per client address, in Redis.

A fixed-window counter per address is read before any credential is compared (the throttle)
and incremented on each failure; a one-second gate per address lets at most one failure a
second reach the audit stream. Both live in Redis so the limits hold across every broker
node. Addresses are hashed: an IPv6 literal or a proxy's value never shapes a key."""

from __future__ import annotations

import hashlib

import redis

from broker.store import keys
from broker.store.connection import store_errors

# Keys (each expires with its window): keys.auth_failures(address hash) names the failures
# in the window and the gate set while a failure is audited; one slot, so one script.

# KEYS: failure counter, audit gate. ARGV: window seconds, gate seconds.
# Returns {failures in the window, seconds until it resets, 1 if this failure opened the gate}.
_NOTE_FAILURE = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[1], 'NX')
local failures = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if redis.call('SET', KEYS[2], 1, 'EX', ARGV[2], 'NX') then
  return {failures, ttl, 1}
end
return {failures, ttl, 0}
"""


def _address_hash(address: str) -> str:
    return hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()[:24]


class RedisAuthFailures:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._note = client.register_script(_NOTE_FAILURE)

    def failures(self, address: str) -> tuple[int, int]:
        """(failures in the current window, seconds until it resets); nothing is written."""
        key = keys.auth_failures(_address_hash(address))[0]
        with store_errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = pipe.execute()
        return int(count or 0), max(int(ttl), 1)

    def note_failure(
        self, address: str, *, window_seconds: int, gate_seconds: int
    ) -> tuple[int, int, bool]:
        """Count one failure; returns (failures in the window, seconds until it resets,
        whether this failure is the first of its gate period and so goes to the stream)."""
        digest = _address_hash(address)
        with store_errors():
            failures, ttl, first = self._note(
                keys=list(keys.auth_failures(digest)),
                args=[window_seconds, gate_seconds],
            )
        return int(failures), max(int(ttl), 1), bool(first)
