"""Redis for tests: what the broker wrote (fakeredis or a real server), snapshots for "a
denial wrote nothing", database numbers handed out so no two suites share one, and a
redis-server that keeps acknowledged writes across SIGKILL."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import redis

from broker.dev.embedded_redis import RedisProcess
from broker.store import keys
from broker.store import keys as K
from tests.support.builders import DENIAL_MAY_TOUCH

# -- what the broker wrote -------------------------------------------------------------------


def audit_events(client: Any) -> list[dict[str, Any]]:
    """Every audit event in the stream, oldest first (client with decoded responses)."""
    return [json.loads(f["e"]) for _id, f in client.xrange(keys.AUDIT_STREAM, "-", "+")]


def stream_events(svc: Any) -> list[dict[str, Any]]:
    """audit_events() of the Redis behind a Services bundle built by fake_services()."""
    return audit_events(svc.redis)


def redis_keys(svc: Any, pattern: str = "errand:*") -> set[str]:
    return set(svc.redis.scan_iter(pattern))


STATE_PATTERNS = (
    "errand:*:grant:*",
    "errand:replay:*",
    "errand:*:task:*",
    "errand:*:grants",
    "errand:owner:*",
    K.EXPIRY_INDEX,
)


def grant_state_keys(svc: Any) -> set[str]:
    """Keys an issued token leaves behind (grant, indexes, replay entry)."""
    out: set[str] = set()
    for pattern in STATE_PATTERNS:
        out |= redis_keys(svc, pattern)
    return out


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key except the ones a denial may touch, with its type, content and expiry.

    Read as bytes: RQ's job hashes hold compressed, non-UTF-8 data."""
    conn = client.connection_pool.connection_kwargs
    r = redis.Redis(host=conn["host"], port=conn["port"], db=conn.get("db", 0))
    skip = tuple(p.encode() for p in DENIAL_MAY_TOUCH)
    out: dict[bytes, Any] = {}
    try:
        for key in r.scan_iter(count=1000):
            if key == keys.AUDIT_STREAM.encode() or key.startswith(skip):
                continue
            kind = r.type(key)
            if kind == b"string":
                value: Any = r.get(key)
            elif kind == b"hash":
                value = r.hgetall(key)
            elif kind == b"zset":
                value = r.zrange(key, 0, -1, withscores=True)
            elif kind == b"set":
                value = sorted(r.smembers(key))
            elif kind == b"list":
                value = r.lrange(key, 0, -1)
            else:
                value = kind
            out[key] = (kind, value, r.pexpiretime(key))
    finally:
        r.close()
    return out


# -- database numbers of the session's redis-server -------------------------------------------


class RedisDbs:
    """Database numbers of one redis-server, handed out by owner name.

    db 0 belongs to the `redis_url` fixture (flushed around every test). Every other user
    asks here instead of writing a number down: the same owner always gets the same
    database, two owners never share one, and each database is flushed when first handed
    out. redis-server has 16 databases unless configured otherwise."""

    def __init__(self, host: str, port: int, databases: int = 16) -> None:
        self.host, self.port = host, port
        self._free = list(range(1, databases))
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()

    def number(self, owner: str) -> int:
        with self._lock:
            if owner not in self._owners:
                if not self._free:
                    raise RuntimeError(
                        f"no Redis database left for {owner!r}; taken: {self._owners}"
                    )
                self._owners[owner] = db = self._free.pop(0)
                client = redis.Redis(host=self.host, port=self.port, db=db)
                try:
                    client.flushdb()
                finally:
                    client.close()
            return self._owners[owner]

    def url(self, owner: str, *, password: str | None = None) -> str:
        auth = f"default:{password}@" if password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.number(owner)}"

    def flush(self, owner: str) -> None:
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis(host=self.host, port=self.port, db=self.number(owner))
            try:
                client.flushdb()
            finally:
                client.close()


class DurableRedis(RedisProcess):
    """RedisProcess with `appendonly yes` and `appendfsync always`: every acknowledged write
    survives a SIGKILL, so "the grant was written before the 200" can be checked afterwards."""

    persistence_args = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")
