"""Fixtures for the callers suite: the multi-platform world (tests/support/platforms.py) on
fakeredis, which follows the test's clock (tests/unit/conftest.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from broker.clock import FixedClock
from broker.config import parse_config
from tests.support.builders import ADMIN_TOKEN, fake_services, make_app
from tests.support.platforms import Keys, fetcher_for, spiffe_bundle, world_config


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
        svc.fake_server = server
        return svc

    return build


@pytest.fixture
def wsvc(build_world: Callable[..., Any]) -> Any:
    return build_world()


@pytest.fixture
def wclient(wsvc: Any, tmp_path: Path) -> Any:
    return make_app(wsvc, tmp_path).test_client()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Errand-Operator": "oncall"}
