"""Unit-suite fixtures layered on tests/conftest.py.

- `svc` is rebuilt on a FakeServer the test can reach (`fake_server`), e.g. to take Redis down.
- fakeredis follows the test's FixedClock, so TTLs, SET NX EX locks and EXAT replay entries
  expire when the test advances the clock (one clock for ordering, as in production Redis)."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import fakeredis._socket._base as fakeredis_base
import pytest

from broker.clock import FixedClock
from tests.support.builders import UNIT_ISSUER, fake_services, gha_token
from tests.support.forms import deploy_form
from tests.support.logs import ListHandler, captured_logs

# The folders of this suite whose tests run fakeredis on the FixedClock (other teams' unit
# tests that live under tests/unit keep fakeredis on real time).
_CLOCKED_DIRS = {"config", "identity", "policy", "domain", "http", "store", "callers"}


@pytest.fixture(autouse=True)
def redis_follows_clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.path.parent.name not in _CLOCKED_DIRS:
        return
    clock: FixedClock = request.getfixturevalue("clock")
    assert hasattr(fakeredis_base, "time"), "fakeredis internals moved; update this fixture"
    monkeypatch.setattr(fakeredis_base, "time", types.SimpleNamespace(time=clock.now))


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def svc(config, key_dir: Path, clock: FixedClock, fetcher, fake_server):
    return fake_services(config, key_dir, clock=clock, fetcher=fetcher, server=fake_server)


@pytest.fixture
def logs() -> Iterator[ListHandler]:
    """Every log record: the root logger and 'errand.audit' (which does not propagate)."""
    with captured_logs() as handler:
        yield handler


@pytest.fixture
def subject(issuer_key, clock: FixedClock) -> Callable[..., str]:
    """A fresh GitHub-Actions-shaped subject token for `acme-deploy` (overrides allowed)."""

    def make(**overrides: Any) -> str:
        return gha_token(issuer_key, UNIT_ISSUER, now=clock.now(), **overrides)

    return make


@pytest.fixture
def exchange(client, subject) -> Callable[..., Any]:
    """POST /token with a fresh subject token (or `token=`) and form overrides."""

    def post(token: str | None = None, **extra: Any) -> Any:
        return client.post("/token", data=deploy_form(token or subject(), **extra))

    return post


@pytest.fixture
def issued(exchange) -> Callable[..., dict[str, Any]]:
    """A successful exchange's JSON body."""

    def issue(token: str | None = None, **extra: Any) -> dict[str, Any]:
        resp = exchange(token, **extra)
        assert resp.status_code == 200, resp.get_json()
        return dict(resp.get_json())

    return issue
