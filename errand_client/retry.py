"""The one retry policy every Errand client call uses.

Only two conditions are retried: a 503 `temporarily_unavailable` answer (honouring its
`Retry-After`, capped) and a failure to reach the server at all (connection refused, reset,
timed out). Every 4xx is terminal: retrying a bad request, an untrusted token or a denied
scope only burns time while the CI job's OIDC token ages.

Each attempt is a fresh call of the attempt function, so token exchanges fetch a FRESH
subject token per attempt (GitHub's OIDC tokens carry a single-use `jti`)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from errand_client.errors import RetriesExhausted

T = TypeVar("T")


class Retryable(Exception):
    """Raised by an attempt to ask for another try. `reason` is safe to print."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    timeout_seconds: float = 5.0  # per attempt, connect and read each
    max_retry_after_seconds: float = 10.0  # a Retry-After above this is capped, not obeyed
    backoff_seconds: float = 0.5  # first wait after a connection error; doubles each time
    max_backoff_seconds: float = 8.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_seconds)
        base = min(self.backoff_seconds * float(2 ** (attempt - 1)), self.max_backoff_seconds)
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def call_with_retry(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, Retryable, float], None] | None = None,
) -> T:
    """Run `attempt` until it returns or raises something other than Retryable."""
    for number in range(1, policy.max_attempts + 1):
        try:
            return attempt()
        except Retryable as signal:
            if number == policy.max_attempts:
                raise RetriesExhausted(number, signal.reason) from None
            wait = policy.delay(number, signal.retry_after)
            if on_retry is not None:
                on_retry(number, signal, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
