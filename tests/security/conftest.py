"""Fixtures of the hardening suites (docs/security.md).

`world` is the broker app on fakeredis, driven through Flask's test client, with every
audit event and log record captured so a test can assert *exactly one* audit event per
denial, carrying the token's SHA-256 and never the token. Everything runs on 127.0.0.1;
slow suites start their own redis-server (never the one on 6379)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostile import ObservedBroker, build_world
from tests.support.logs import ListHandler, captured_logs
from tests.support.servers import CountingListener


@pytest.fixture(scope="session")
def listener() -> Iterator[CountingListener]:
    server = CountingListener().start()
    yield server
    server.stop()


@pytest.fixture
def capture_logs() -> Iterator[ListHandler]:
    with captured_logs() as handler:
        yield handler


@pytest.fixture
def make_world(
    tmp_path: Path, issuer_key: Any, listener: CountingListener, capture_logs: ListHandler
) -> Callable[..., ObservedBroker]:
    def make(
        mutate: Any = None, limits: dict[str, Any] | None = None, **broker: Any
    ) -> ObservedBroker:
        world = build_world(tmp_path, issuer_key, listener, mutate, limits, **broker)
        world.capture = capture_logs
        return world

    return make


@pytest.fixture
def world(make_world: Callable[..., ObservedBroker]) -> ObservedBroker:
    return make_world()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment may carry a request off the machine."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
