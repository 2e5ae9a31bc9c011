"""End-to-end fixtures: one gunicorn + worker stack for the session, on its own database of
the session's private redis-server (tests/support/redis.py hands the numbers out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
import yaml

from tests.support.delegation import add_actors
from tests.support.redis import RedisDbs
from tests.support.stack import Stack


@pytest.fixture(scope="session")
def e2e_redis_url(redis_dbs: RedisDbs) -> Iterator[str]:
    yield redis_dbs.url("e2e-stack")
    redis_dbs.flush("e2e-stack")


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, e2e_redis_url: str, dev_issuer: Any
) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("e2e-stack"), e2e_redis_url, dev_issuer.issuer)
    # The delegation story's actors (tests/e2e/test_delegation.py), each on its own branch.
    doc = yaml.safe_load(running.config_file.read_text())
    add_actors(doc, "dev-ci", "acme-app-deploy")
    running.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def peek(e2e_redis_url: str) -> Iterator[redis.Redis]:
    """Read-only looks at Redis for assertions the HTTP API cannot make (key expiry)."""
    client = redis.Redis.from_url(e2e_redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # 127.0.0.1 only, never through a proxy
        yield session


def pytest_runtest_makereport(item: pytest.Item, call: Any) -> None:
    """On failure, show the stack's logs (gunicorn and worker)."""
    if call.when == "call" and call.excinfo is not None:
        running = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
        if isinstance(running, Stack):
            item.add_report_section("call", "stack logs", running.logs())
