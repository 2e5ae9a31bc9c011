"""The Redis client every store module uses, and the one place a Redis fault becomes
StoreUnavailable.

Fail closed (SECURITY.md): whatever Redis answers with, unreachable, read-only, loading,
out of memory or a script error, the caller gets StoreUnavailable and the HTTP layer a 503
with Retry-After, never a half-answer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import RedisError

from broker.domain.ports import StoreUnavailable


def connect(url: str, *, timeout: float, decode: bool = True) -> redis.Redis:
    """A client with short timeouts, so an outage is a quick 503, not a hung worker."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn any RedisError into StoreUnavailable. A context manager, or a decorator:
    `@store_errors()` on a method guards its whole body."""
    try:
        yield
    except RedisError as err:
        raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
