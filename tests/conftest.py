"""Shared fixtures. The suite never touches a Redis on 6379: integration and e2e tests use
a private redis-server started on a free port for the session."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker.clock import FixedClock
from broker.devissuer import DevIssuer, load_or_create_key
from broker.embedded_redis import RedisProcess
from broker.tokens.keyring import SigningKey
from tests.fixtures.builders import StaticFetcher, fake_services, make_config, make_key_dir

# An issuer URL for unit tests, where JWKS come from StaticFetcher rather than HTTP.
UNIT_ISSUER = "https://token.actions.githubusercontent.example"


@pytest.fixture(scope="session")
def issuer_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return load_or_create_key(tmp_path_factory.mktemp("issuer") / "key.pem")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_800_000_000.0)


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
    from broker.app import create_app
    from broker.settings import Settings
    from tests.fixtures.builders import ADMIN_TOKEN

    admin = tmp_path / "admin-token"
    admin.write_text(ADMIN_TOKEN)
    settings = Settings(
        config_path=Path("unused.yaml"),
        redis_url="redis://fake",
        signing_key_dir=Path("unused"),
        admin_token_file=admin,
    )
    return create_app(settings, services=svc)


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
def dev_issuer(issuer_key: SigningKey) -> Iterator[DevIssuer]:
    issuer = DevIssuer(issuer_key).start()
    yield issuer
    issuer.stop()


@pytest.fixture
def fresh_id() -> str:
    return secrets.token_hex(6)
