"""An issuer removed by one reload and re-added by the next does not keep its old keys.

Before: a reload dropped cached keys only for an issuer present in both configurations whose
key source changed; an issuer that was absent from the previous configuration kept whatever
this process (and the Redis mirror) still held for its id. Now every issuer that is new to
the configuration, or whose key source changed, is forgotten in process and in the mirror,
and a cached key set is only used for the key source it was fetched from."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import load_config
from broker.dev.issuer import mint_with
from broker.store import keys as rkeys
from tests.support.builders import fake_services, make_app
from tests.support.forms import exchange_form
from tests.support.jws import new_es256_key
from tests.support.platforms import AUD, DEPLOY, ReloadingBroker, denied, fetcher_for, jwks_of, ok

X_URL = "https://ci.partner-x.example"
X_ISSUER = {
    "id": "partner-x",
    "issuer": X_URL,
    "audience": AUD,
    "jwks_uri": X_URL + "/keys-v1",
    "algorithms": ["ES256"],
}
X_IDENTITY = {
    "id": "partner-x-deploy",
    "type": "service",
    "owner": "partnerships",
    "purpose": "partner X deploys",
    "match": [{"issuer": "partner-x", "claims": {"sub": "pipeline:partner-x:main"}}],
    "allow": {"audiences": [DEPLOY], "scopes": ["deploy:read"], "default_scopes": ["deploy:read"]},
}


def with_x(raw: dict[str, Any], **issuer: Any) -> dict[str, Any]:
    doc = copy.deepcopy(raw)
    doc["issuers"].append({**X_ISSUER, **issuer})
    doc["identities"].append(copy.deepcopy(X_IDENTITY))
    return doc


def x_token(key: Any, now: float) -> str:
    claims = {
        "iss": X_URL,
        "sub": "pipeline:partner-x:main",
        "aud": AUD,
        "iat": int(now),
        "exp": int(now) + 300,
        "jti": secrets.token_hex(8),
    }
    return mint_with(key, claims)


@pytest.fixture(autouse=True)
def keep_sighup() -> Iterator[None]:
    import signal

    old = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, old)


@pytest.fixture
def old_key() -> Any:
    return new_es256_key()


@pytest.fixture
def world(
    tmp_path: Path,
    world_raw: dict[str, Any],
    wkeys: Any,
    key_dir: Path,
    clock: Any,
    old_key: Any,
) -> ReloadingBroker:
    fetcher = fetcher_for(wkeys)
    fetcher.by_issuer["partner-x"] = jwks_of(old_key)
    return ReloadingBroker.start(
        tmp_path, with_x(world_raw), key_dir=key_dir, clock=clock, fetcher=fetcher
    )


def reload(world: ReloadingBroker, doc: dict[str, Any], clock: Any) -> None:
    world.write(doc)
    clock.advance(1)
    world.tick()
    assert world.reloader.status["ok"], world.reloader.status


def post(world: ReloadingBroker, key: Any, clock: Any) -> Any:
    return world.client.post(
        "/token", data=exchange_form(x_token(key, clock.now()), audience=DEPLOY)
    )


def remove_x_then_readd(world: ReloadingBroker, clock: Any, same_source: bool) -> Any:
    """Reload without X, then with X again; X's issuer now publishes a new key set (at a
    new URL, or at the same one). Returns the new key."""
    without_x = copy.deepcopy(world.raw)
    without_x["issuers"] = [i for i in without_x["issuers"] if i["id"] != "partner-x"]
    without_x["identities"] = [i for i in without_x["identities"] if i["id"] != X_IDENTITY["id"]]
    reload(world, without_x, clock)
    new_key = new_es256_key()
    world.svc.verifier._jwks._fetcher.by_issuer["partner-x"] = jwks_of(new_key)
    source = {} if same_source else {"jwks_uri": X_URL + "/keys-v2"}
    reload(world, with_x(without_x, **source), clock)
    return new_key


SOURCES = pytest.mark.parametrize(
    "same_source", [False, True], ids=["new-jwks-source", "same-jwks-uri"]
)


@pytest.mark.regression
@SOURCES
def test_review_issuer_removed_then_readded_does_not_keep_its_old_keys(
    world: ReloadingBroker, clock: Any, old_key: Any, same_source: bool
) -> None:
    ok(post(world, old_key, clock))  # X's old keys are cached here and mirrored in Redis
    new_key = remove_x_then_readd(world, clock, same_source)
    denied(post(world, old_key, clock))  # the old keys are not accepted
    ok(post(world, new_key, clock))


@pytest.mark.regression
@SOURCES
def test_review_readded_issuer_is_dropped_from_the_redis_mirror(
    world: ReloadingBroker, clock: Any, old_key: Any, same_source: bool
) -> None:
    ok(post(world, old_key, clock))
    r = world.svc.redis
    assert r.exists(rkeys.jwks("partner-x"))
    remove_x_then_readd(world, clock, same_source)
    assert not r.exists(rkeys.jwks("partner-x"))


def test_review_keys_of_a_replaced_source_are_not_used_by_another_process(
    world: ReloadingBroker, clock: Any, old_key: Any, key_dir: Path, wkeys: Any
) -> None:
    """A process that starts with X on a new source while the mirror still holds keys fetched
    from the old one never adopts them: a 503 while the old fetch's cooldown runs, then the
    new source's keys."""
    ok(post(world, old_key, clock))
    doc = copy.deepcopy(world.raw)
    next(i for i in doc["issuers"] if i["id"] == "partner-x")["jwks_uri"] = X_URL + "/keys-v2"
    path = world.path.with_name("other.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    new_key = new_es256_key()
    fetcher = fetcher_for(wkeys)
    fetcher.by_issuer["partner-x"] = jwks_of(new_key)
    other = fake_services(
        load_config(path), key_dir, clock=clock, fetcher=fetcher, server=world.svc.server
    )
    client = make_app(other, world.path.parent).test_client()

    def exchange(key: Any) -> Any:
        return client.post("/token", data=exchange_form(x_token(key, clock.now()), audience=DEPLOY))

    assert exchange(old_key).status_code == 503
    clock.advance(61)  # the old source's refresh cooldown
    denied(exchange(old_key))
    ok(exchange(new_key))
    assert fetcher.calls == ["partner-x"]
