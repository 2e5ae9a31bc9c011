"""Reloading the configuration file without a restart; a bad file keeps the old one."""

from __future__ import annotations

import copy
import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.reload import ConfigReloader
from tests.support.forms import exchange_form
from tests.support.platforms import (
    DEPLOY,
    ReloadingBroker,
    assertion,
    denied,
    fetcher_for,
    github_token,
    jwks_of,
    ok,
)
from tests.support.redis import stream_events


@pytest.fixture(autouse=True)
def keep_sighup() -> Iterator[None]:
    old = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, old)


@pytest.fixture
def world(
    tmp_path: Path, world_raw: dict[str, Any], wkeys: Any, key_dir: Path, clock: Any
) -> ReloadingBroker:
    return ReloadingBroker.start(
        tmp_path, copy.deepcopy(world_raw), key_dir=key_dir, clock=clock, fetcher=fetcher_for(wkeys)
    )


def new_identity(raw: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(raw)
    doc["identities"].append(
        {
            "id": "gh-docs",
            "type": "service",
            "owner": "docs-team",
            "purpose": "publish docs",
            "match": [
                {
                    "issuer": "github",
                    "claims": {
                        "repository_id": "777",
                        "repository_owner_id": "4242",
                        "ref": "refs/heads/main",
                    },
                }
            ],
            "allow": {
                "audiences": [DEPLOY],
                "scopes": ["deploy:read"],
                "default_scopes": ["deploy:read"],
            },
        }
    )
    return doc


def docs_token(wkeys: Any, clock: Any) -> str:
    return github_token(wkeys.github, clock.now(), repository="acme/docs", repository_id="777")


def test_a_changed_file_is_picked_up_without_restart(
    world: ReloadingBroker, wkeys: Any, clock: Any, admin_headers: dict[str, str]
) -> None:
    denied(
        world.client.post("/token", data=exchange_form(docs_token(wkeys, clock), audience=DEPLOY))
    )
    world.write(new_identity(world.raw))
    world.tick()
    ok(world.client.post("/token", data=exchange_form(docs_token(wkeys, clock), audience=DEPLOY)))
    status = world.client.get("/admin/identities/reload", headers=admin_headers).get_json()
    assert status["ok"] and status["generation"] == 2 and status["identities"] == 9
    assert [e for e in stream_events(world.svc) if e["event"] == "config.reload"][-1][
        "outcome"
    ] == "loaded"


def test_no_check_before_the_interval(world: ReloadingBroker, wkeys: Any, clock: Any) -> None:
    world.client.get("/healthz")  # the first check sets the next one ~5 s ahead
    world.write(new_identity(world.raw))
    world.client.get("/healthz")
    assert world.svc.config.identity("gh-docs") is None


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda doc: "broker: [unclosed", "not valid YAML"),
        (
            lambda doc: {
                **doc,
                "issuers": [{**doc["issuers"][0], "algorithms": ["HS256"]}, *doc["issuers"][1:]],
            },
            "issuers.0.algorithms.0",
        ),
        (lambda doc: {**doc, "identities": []}, "lists no identities"),
        (
            lambda doc: {**doc, "broker": {**doc["broker"], "issuer": "https://other.example"}},
            "broker.issuer cannot change",
        ),
    ],
    ids=["bad-yaml", "invalid", "truncated", "issuer-change"],
)
def test_a_bad_reload_keeps_the_running_configuration(
    world: ReloadingBroker,
    wkeys: Any,
    clock: Any,
    admin_headers: dict[str, str],
    change: Any,
    fragment: str,
) -> None:
    before = world.svc.config
    result = change(copy.deepcopy(world.raw))
    if isinstance(result, str):
        world.write(None, text=result)
    else:
        world.write(result)
    world.tick()
    assert world.svc.config is before  # nothing half-loaded
    ok(
        world.client.post(
            "/token", data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    status = world.client.get("/admin/identities/reload", headers=admin_headers).get_json()
    assert not status["ok"] and fragment in status["error"]
    refused = [e for e in stream_events(world.svc) if e["event"] == "config.reload"][-1]
    assert refused["outcome"] == "refused" and fragment in refused["error"]


def test_a_bad_file_is_parsed_once_then_a_fix_is_applied(
    world: ReloadingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.reload as reload_module

    calls = {"n": 0}
    real = reload_module.load_config

    def counting(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(reload_module, "load_config", counting)
    world.write(None, text="broker: [")
    for _ in range(3):
        world.tick()
    assert calls["n"] == 1
    world.write(new_identity(world.raw))
    world.tick()
    assert calls["n"] == 2 and world.svc.config.identity("gh-docs") is not None
    assert world.reloader.status["ok"]


def test_sighup_forces_a_check(world: ReloadingBroker) -> None:
    world.client.get("/healthz")
    world.write(new_identity(world.raw))
    signal.raise_signal(signal.SIGHUP)
    world.client.get("/healthz")
    assert world.svc.config.identity("gh-docs") is not None


def test_admin_reload_now(world: ReloadingBroker, admin_headers: dict[str, str]) -> None:
    world.write(new_identity(world.raw))
    body = world.client.post("/admin/identities/reload", headers=admin_headers).get_json()
    assert body["ok"] and body["identities"] == 9


def test_status_names_the_file_the_same_way_in_every_process(
    world: ReloadingBroker, admin_headers: dict[str, str]
) -> None:
    def digest() -> str:
        return hashlib.sha256(world.path.read_bytes()).hexdigest()[:16]

    first = digest()
    for _ in range(2):  # the same file again: this process counts, the file is unchanged
        world.client.post("/admin/identities/reload", headers=admin_headers)
    status = world.client.get("/admin/identities/reload", headers=admin_headers).get_json()
    assert status["generation"] == status["process_generation"] == 3
    assert status["config_sha256"] == first
    assert status["config_mtime"] == world.path.stat().st_mtime_ns / 1e9
    other = ConfigReloader(world.svc, world.path)  # another web process, on the same file
    assert other.status["generation"] == 1
    assert other.status["config_sha256"] == first

    world.write(new_identity(world.raw))
    body = world.client.post("/admin/identities/reload", headers=admin_headers).get_json()
    assert body["config_sha256"] == digest() != first
    world.write(None, text="broker: [this is not yaml")
    body = world.client.post("/admin/identities/reload", headers=admin_headers).get_json()
    assert not body["ok"] and body["config_sha256"] != digest()  # still the running one


def test_changed_key_source_drops_cached_keys(
    world: ReloadingBroker, wkeys: Any, clock: Any
) -> None:
    """Moving an issuer to a new key set (jwks_uri) must not keep trusting the old keys."""
    ok(
        world.client.post(
            "/token", data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    fetcher = world.svc.verifier._jwks._fetcher
    fetcher.by_issuer["github"] = jwks_of(wkeys.stranger)
    doc = copy.deepcopy(world.raw)
    doc["issuers"][0]["jwks_uri"] = (
        "https://token.actions.githubusercontent.com/.well-known/jwks-v2"
    )
    world.write(doc)
    clock.advance(1)
    world.tick()
    denied(
        world.client.post(
            "/token", data=exchange_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    ok(
        world.client.post(
            "/token", data=exchange_form(github_token(wkeys.stranger, clock.now()), audience=DEPLOY)
        )
    )


def test_reloaded_agent_keys_take_effect(world: ReloadingBroker, wkeys: Any, clock: Any) -> None:
    def form(key: Any) -> dict[str, Any]:
        return exchange_form(
            assertion(key, "agent-summariser", clock.now()), task_id="t", purpose="p"
        )

    ok(world.client.post("/token", data=form(wkeys.agent)))
    doc = copy.deepcopy(world.raw)
    next(i for i in doc["identities"] if i["id"] == "agent-summariser")["keys"] = {
        "jwks": jwks_of(wkeys.stranger)
    }
    world.write(doc)
    world.tick()
    denied(world.client.post("/token", data=form(wkeys.agent)))  # the rotated-out key
    ok(world.client.post("/token", data=form(wkeys.stranger)))


def test_no_reloader_without_a_file(wclient: Any, admin_headers: dict[str, str]) -> None:
    assert wclient.get("/admin/identities/reload", headers=admin_headers).status_code == 404
