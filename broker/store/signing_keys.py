"""KeyRecordStore on Redis: the hash of sealed signing-key records (broker/tokens/keystore.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.exceptions import WatchError

from broker.store import keys


class RedisKeyRecords:
    """KeyRecordStore on a Redis hash; the version counter tells nodes something changed."""

    def __init__(self, client: Any) -> None:
        self._r = client
        self._hash = keys.SIGNING_KEYS
        self._version = keys.SIGNING_KEYS_VERSION

    def load_all(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._r.hgetall(self._hash).items()}

    def put(self, kid: str, record_json: str, *, only_if_empty: bool = False) -> bool:
        if only_if_empty:
            # Two nodes booting together must not both create a first key.
            ok = bool(self._r.set(self._hash + ":bootstrap", kid, nx=True))
            if not ok:
                return False
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._hash, kid, record_json)
        pipe.incr(self._version)
        pipe.execute()
        return True

    def replace(self, expected: Mapping[str, str], updated: Mapping[str, str]) -> bool:
        """WATCH the hash, compare it whole, then write in MULTI/EXEC: a node that raced us
        (or anyone who changed a record meanwhile) makes this a no-op that returns False."""
        with self._r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._hash)
                current = {str(k): str(v) for k, v in pipe.hgetall(self._hash).items()}
                if current != dict(expected):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(self._hash, mapping=dict(updated))
                pipe.incr(self._version)
                pipe.execute()
            except WatchError:
                return False
        return True

    def version(self) -> int:
        return int(self._r.get(self._version) or 0)
