"""Time for tests. Code that waits takes its clock and its sleep as arguments, and tests hand
it one of these: time moves only when the test (or the code's own sleep) moves it, never the
real clock. `wait_until` is the one exception, for a real thread or process to get somewhere,
always with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.clock import FixedClock


class FakeClock(FixedClock):
    """A FixedClock that is also a callable (`clock=`, `monotonic=` arguments) and a sleep:
    `sleep(s)` records s and advances the clock by it, so a waiting loop ends at once."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now()

    def monotonic(self) -> float:
        return self.now()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


class Sleeper:
    """monotonic() and sleep() for one waiting worker over a shared clock: sleeping advances
    that clock (and whatever follows it, fakeredis TTLs included); `on_sleep` runs first, to
    let another worker make progress while this one waits."""

    def __init__(self, clock: FixedClock, on_sleep: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.on_sleep = on_sleep
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep()
        self.slept += seconds
        self.clock.advance(seconds)

    __call__ = sleep


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` real seconds pass; True if it held. Only
    for waiting on a real thread or process, never to let time pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
