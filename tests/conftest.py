"""Shared fixtures. The suite never touches a Redis on 6379: integration and e2e tests use
a private redis-server started on a free port for the session."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings

from broker.clock import FixedClock
from broker.dev.embedded_redis import RedisProcess
from broker.dev.issuer import DevIssuer, load_or_create_key
from broker.tokens.keyring import SigningKey
from tests.support import lazy_routes
from tests.support.builders import (
    UNIT_ISSUER,
    StaticFetcher,
    fake_services,
    make_app,
    make_config,
    make_key_dir,
)
from tests.support.clocks import FakeClock
from tests.support.redis import RedisDbs

# The one hypothesis profile. CI (which sets CI=true) replays the same examples on every run;
# elsewhere each run draws new ones. Example counts are per test (@settings(max_examples=…)).
# No example database: a failure prints its reproduction, and nothing is left in the tree.
settings.register_profile(
    "errand",
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("errand")

lazy_routes.install()  # URL builders compiled on first use (tests/support/lazy_routes.py)

# Tests that start processes or talk to a real Redis: `make test` runs them, `make test-fast`
# leaves them out (pytest -m "not slow").
SLOW_FOLDERS = ("e2e", "integration")
SLOW_MARKERS = ("e2e", "integration")


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        in_slow_folder = item.path.is_relative_to(tests_dir) and (
            item.path.relative_to(tests_dir).parts[0] in SLOW_FOLDERS
        )
        if in_slow_folder or any(item.get_closest_marker(m) for m in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def issuer_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return load_or_create_key(tmp_path_factory.mktemp("issuer") / "key.pem")


@pytest.fixture
def clock() -> FakeClock:
    """Wall time for Services, fakeredis (tests/unit/conftest.py) and any injected sleep."""
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return make_key_dir(tmp_path)


@pytest.fixture
def fetcher(issuer_key: SigningKey) -> StaticFetcher:
    return StaticFetcher({"keys": [issuer_key.public_jwk()]})


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(UNIT_ISSUER)


@pytest.fixture
def svc(config, key_dir: Path, clock: FixedClock, fetcher: StaticFetcher):  # type: ignore[no-untyped-def]
    return fake_services(config, key_dir, clock=clock, fetcher=fetcher)


@pytest.fixture
def app(svc, tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_app(svc, tmp_path)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


# -- real Redis ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    """The session's private Redis, flushed before and after each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    with contextlib.suppress(redis.RedisError):
        client.flushdb()


@pytest.fixture(scope="session")
def redis_dbs(redis_server: RedisProcess) -> RedisDbs:
    """Databases 1-15 of the session's redis-server, each for one named owner."""
    return RedisDbs("127.0.0.1", redis_server.port)


@pytest.fixture(scope="session")
def dev_issuer(issuer_key: SigningKey) -> Iterator[DevIssuer]:
    issuer = DevIssuer(issuer_key).start()
    yield issuer
    issuer.stop()


@pytest.fixture
def fresh_id() -> str:
    return secrets.token_hex(6)
