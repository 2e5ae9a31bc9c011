"""Web-console sessions in Redis (broker/http/console/session.py decides what they mean).

One hash per session under the SHA-256 of the id its cookie carries, so reading Redis does
not give anyone a usable cookie. The key's TTL is the idle timeout, pushed back on each use
(lua/console_touch.lua); logout deletes it. Sessions live in Redis so that every broker node
knows them and a logout on one node ends the session on all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis

from broker.store import keys, lua_scripts
from broker.store.connection import store_errors


class RedisConsoleSessions:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._touch = client.register_script(lua_scripts.CONSOLE_TOUCH)

    @store_errors()
    def create(self, digest: str, record: Mapping[str, str], *, ttl_seconds: int) -> None:
        key = keys.console_session(digest)
        fields: dict[Any, Any] = dict(record)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, ttl_seconds)
        pipe.execute()

    @store_errors()
    def touch(self, digest: str, *, now: float, ttl_seconds: int) -> dict[str, str] | None:
        """The session's record as it was before this use, None when there is none; a
        session that exists is marked used now and kept for another `ttl_seconds`."""
        flat = cast(
            list[Any], self._touch(keys=[keys.console_session(digest)], args=[now, ttl_seconds])
        )
        if not flat:
            return None
        text = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
        return dict(zip(text[0::2], text[1::2], strict=True))

    @store_errors()
    def delete(self, digest: str) -> None:
        self._r.delete(keys.console_session(digest))
