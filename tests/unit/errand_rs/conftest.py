"""Fixtures for errand_rs tests: the fake broker publishing the keys of a real key ring."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from broker.tokens.keyring import KeyRing, SigningKey, generate_key
from broker.tokens.mint import access_token_claims, mint_access_token
from errand_rs import ErrandVerifier, RevocationFeed
from tests.support.clocks import FakeClock
from tests.support.fake_broker import (
    RS_AUDIENCE,
    RS_CLIENT_ID,
    RS_CLIENT_SECRET,
    FakeBroker,
    make_grant,
)


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    server = FakeBroker().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing.from_dir(_key_dir(tmp_path_factory.mktemp("rs-keys")))


def _key_dir(path: Path) -> Path:
    generate_key(path)
    return path


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    """A key the broker does not publish."""
    return generate_key(tmp_path_factory.mktemp("rs-other-key"))


@pytest.fixture
def published(broker: FakeBroker, keyring: KeyRing) -> FakeBroker:
    broker.publish(keyring.active)
    return broker


@pytest.fixture
def mint(published: FakeBroker, keyring: KeyRing) -> Callable[..., str]:
    """A real Errand access token for `published`'s issuer; keyword arguments override the grant."""

    def _mint(*, issuer: str | None = None, **overrides: Any) -> str:
        return mint_access_token(make_grant(**overrides), keyring, issuer or published.url)

    return _mint


@pytest.fixture
def sign(published: FakeBroker, keyring: KeyRing) -> Callable[..., str]:
    """Sign arbitrary claims/headers: sign(claims_overrides, headers_overrides, key=...)."""

    def _sign(
        claims: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        key = key or keyring.active
        body = access_token_claims(make_grant(), published.url)
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        hdr = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
        return jwt.encode(body, key.private_key, algorithm=key.alg, headers=hdr)

    return _sign


@pytest.fixture
def mono() -> FakeClock:
    """The monotonic clock of the verifier under test: JWKS expiry and cooldowns move only
    when the test advances it."""
    return FakeClock(0.0)


@pytest.fixture
def verifier(published: FakeBroker) -> ErrandVerifier:
    return ErrandVerifier(published.url, RS_AUDIENCE, jwks_refresh_cooldown_seconds=0.3)


@pytest.fixture
def feed(published: FakeBroker) -> Iterator[RevocationFeed]:
    """A feed driven by the test (`sync_once()`), no background thread."""
    f = RevocationFeed(published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False)
    yield f
    f.stop()
