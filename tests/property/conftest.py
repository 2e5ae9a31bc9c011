"""Property-suite fixtures: one app per module (hypothesis reuses it across examples)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.clock import FixedClock
from tests.support.builders import (
    UNIT_ISSUER,
    StaticFetcher,
    fake_services,
    make_app,
    make_config,
    make_key_dir,
)


@pytest.fixture(scope="module")
def prop_env(tmp_path_factory: pytest.TempPathFactory, issuer_key: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("prop")
    clock = FixedClock(1_800_000_000.0)
    fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
    svc = fake_services(make_config(UNIT_ISSUER), make_key_dir(tmp), clock=clock, fetcher=fetcher)
    app = make_app(svc, tmp)
    return {"svc": svc, "client": app.test_client(), "clock": clock, "key": issuer_key}
