"""Fixtures for the workload-identity suite: the multi-platform world on fakeredis, with
fakeredis following the test's FixedClock (TTLs and EXAT replay entries move with it)."""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import fakeredis._socket._base as fakeredis_base
import pytest

from broker.clock import FixedClock
from broker.config import parse_config
from tests.fixtures.builders import ADMIN_TOKEN, fake_services
from tests.unit.identity3.world import Keys, fetcher_for, spiffe_bundle, world_config


@pytest.fixture(autouse=True)
def redis_follows_clock(clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fakeredis_base, "time", types.SimpleNamespace(time=clock.now))


@pytest.fixture(scope="session")
def wkeys() -> Keys:
    return Keys()


@pytest.fixture
def bundle_file(tmp_path: Path, wkeys: Keys) -> Path:
    path = tmp_path / "prod.bundle.json"
    path.write_text(json.dumps(spiffe_bundle(wkeys.spiffe)))
    return path


@pytest.fixture
def world_raw(wkeys: Keys, bundle_file: Path) -> dict[str, Any]:
    return world_config(wkeys, bundle_file)


@pytest.fixture
def build_world(
    wkeys: Keys, key_dir: Path, clock: FixedClock, world_raw: dict[str, Any]
) -> Callable[..., Any]:
    """Services on a fresh FakeServer for the world config, optionally mutated."""

    def build(mutate: Callable[[dict[str, Any]], None] | None = None) -> Any:
        raw = copy.deepcopy(world_raw)
        if mutate:
            mutate(raw)
        server = fakeredis.FakeServer()
        svc = fake_services(
            parse_config(raw), key_dir, clock=clock, fetcher=fetcher_for(wkeys), server=server
        )
        svc.extras["fake_server"] = server
        return svc

    return build


@pytest.fixture
def wsvc(build_world: Callable[..., Any]) -> Any:
    return build_world()


def make_app(svc: Any, tmp_path: Path, config_path: Path | None = None) -> Any:
    from broker.app import create_app
    from broker.settings import Settings

    admin = tmp_path / "admin-token"
    admin.write_text(ADMIN_TOKEN)
    settings = Settings(
        config_path=config_path or Path("unused.yaml"),
        redis_url="redis://fake",
        signing_key_dir=Path("unused"),
        admin_token_file=admin,
    )
    return create_app(settings, services=svc)


@pytest.fixture
def wclient(wsvc: Any, tmp_path: Path) -> Any:
    return make_app(wsvc, tmp_path).test_client()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Errand-Operator": "oncall"}
