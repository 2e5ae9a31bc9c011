"""Fixtures for the integration suite: real Services on the session's private redis-server.

Nothing here talks HTTP to the broker; the JWKS of the test issuer is fetched over HTTP from
the dev issuer on 127.0.0.1 (real discovery + JWKS), everything else is in-process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from broker.domain.ports import Services
from broker.services import build_services
from broker.settings import Settings
from tests.support.builders import config_dict, gha_token, make_config, make_key_dir


@pytest.fixture
def int_key_dir(tmp_path: Path) -> Path:
    return make_key_dir(tmp_path)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client for looking at what the broker wrote (decoded strings)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_svc(redis_url: str, dev_issuer: Any, int_key_dir: Path) -> Callable[..., Services]:
    """Services on real Redis, built as production builds them (redis clients left None)."""

    def build(url: str | None = None, mutate: Any = None, **broker_overrides: Any) -> Services:
        settings = Settings(
            config_path=Path("unused.yaml"), redis_url=url or redis_url, signing_key_dir=int_key_dir
        )
        return build_services(
            settings, config=make_config(dev_issuer.issuer, mutate, **broker_overrides)
        )

    return build


@pytest.fixture
def svc(make_svc: Callable[..., Services]) -> Services:
    return make_svc()


@pytest.fixture
def subject(issuer_key: Any, dev_issuer: Any) -> Callable[..., str]:
    """A fresh GitHub-shaped subject token from the dev issuer (unique jti each call)."""

    def mint(**overrides: Any) -> str:
        return gha_token(issuer_key, dev_issuer.issuer, now=time.time(), **overrides)

    return mint


@pytest.fixture
def worker_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_url: str,
    dev_issuer: Any,
    int_key_dir: Path,
) -> Iterator[Path]:
    """Environment for workers.context.services(): a YAML config, REDIS_URL, key dir."""
    import workers.context

    config_file = tmp_path / "errand.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(dev_issuer.issuer)))
    monkeypatch.setenv("ERRAND_CONFIG", str(config_file))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("ERRAND_SIGNING_KEY_DIR", str(int_key_dir))
    monkeypatch.delenv("ERRAND_REDIS_URL", raising=False)
    monkeypatch.setenv("ERRAND_ENV", "production")
    workers.context.services.cache_clear()
    yield config_file
    workers.context.services.cache_clear()
