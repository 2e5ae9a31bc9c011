"""Key records in Redis are authenticated as a whole, not only their sealed private key: a
record whose `removed`, `activate_at`, `retire_at` or `public_jwk` was changed by someone with
Redis write access (but without the KEK) is ignored: never published, never used to sign."""

from __future__ import annotations

import base64
import json
import logging

import jwt
import pytest

from broker.tokens.keyrecord import new_kek
from broker.tokens.keyring import KeyError_
from broker.tokens.keystore import RedisKeyRing
from broker.tokens.verify import verify_access_token
from tests.support.keyrecords import LEAD, MAX_TTL, MemoryKeyRecords, kids, node

pytestmark = pytest.mark.regression
ISSUER = "https://errand.example"


def sign(ring: RedisKeyRing, now: float) -> str:
    key = ring.active
    claims = {"iss": ISSUER, "sub": "s", "exp": int(now) + 60, "iat": int(now), "jti": "j"}
    claims["task_id"] = "t"
    return jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
    )


def test_tampered_removed_flag_does_not_republish_an_emergency_removed_key(
    store, kek, clock
) -> None:
    ring = node(store, kek, clock)
    old = ring.active.kid
    ring.rotate(emergency=True)
    assert old not in kids(ring)
    store.tamper(old, removed=False)  # Redis write access, no KEK
    for reader in (ring, node(store, kek, clock)):  # a running node and a new one
        assert old not in kids(reader)
        assert reader.get(old) is None
        assert reader.active.kid != old
        assert old not in {k["kid"] for k in reader.all_public_keys()["keys"]}


def test_tampered_activate_at_does_not_choose_the_signing_key(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    current = ring.active.kid
    clock.advance(10)
    pending = ring.rotate()["kid"]  # published now, signs only after the lead time
    store.tamper(pending, activate_at=clock.now() - 1)  # later than the current key's: it'd sign
    fresh = node(store, kek, clock)
    assert fresh.active.kid == current
    assert pending not in kids(fresh)
    assert fresh.get(pending) is None


def test_tampered_public_jwk_is_never_published(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    first = ring.active.kid
    ring.rotate()
    clock.advance(LEAD + 1)  # the new key signs; the first stays published, retiring
    assert first in kids(ring) and ring.active.kid != first
    attacker = json.loads(store.raw[first])["public_jwk"] | {"x": "A" * 43, "y": "B" * 43}
    store.tamper(first, public_jwk=attacker)
    fresh = node(store, kek, clock)
    assert first not in kids(fresh)
    assert fresh.get(first) is None
    published = json.dumps(fresh.all_public_keys())
    assert "A" * 43 not in published and first not in published


def test_tampered_retire_at_does_not_extend_a_retired_key(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    first = ring.active.kid
    ring.rotate()
    clock.advance(LEAD + MAX_TTL + 121)  # the first key is retired
    assert first not in kids(ring)
    store.tamper(first, retire_at=None)
    assert first not in kids(node(store, kek, clock))


def test_a_record_whose_authentication_fails_is_logged_without_secrets(
    store, kek, clock, caplog: pytest.LogCaptureFixture
) -> None:
    ring = node(store, kek, clock)
    old = ring.active.kid
    ring.rotate(emergency=True)
    store.tamper(old, removed=False)
    enc = json.loads(store.raw[old])["enc"]
    with caplog.at_level(logging.WARNING):
        node(store, kek, clock).jwks()
    text = caplog.text
    assert old in text and "authenticat" in text
    assert enc not in text


def test_untampered_records_and_a_rotation_round_trip_still_work(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    first = ring.active.kid
    old_token = sign(ring, clock.now())
    second = ring.rotate()["kid"]
    other = node(store, kek, clock)  # every node agrees
    assert other.active.kid == first and {first, second} <= kids(other)
    clock.advance(LEAD + 1)
    assert ring.active.kid == second and other.active.kid == second
    assert first in kids(other)  # still published: tokens it signed keep verifying
    new_token = sign(other, clock.now())
    for token in (old_token, new_token):
        assert verify_access_token(token, ring, ISSUER, now=clock.now(), leeway=0, verify_exp=False)
    third = ring.rotate(emergency=True)["kid"]
    fresh = node(store, kek, clock)
    assert fresh.active.kid == third and second not in kids(fresh)
    assert fresh.status()[-1]["kid"] == third


def test_another_kek_opens_nothing_and_creates_nothing(store, kek, clock) -> None:
    node(store, kek, clock).active  # noqa: B018 - the first node creates the first key
    before = dict(store.raw)
    stranger = node(store, base64.b64decode(new_kek()), clock)
    with pytest.raises(KeyError_):
        stranger.active  # noqa: B018
    assert store.raw == before


def test_a_rotation_that_finds_no_key_activates_its_key_at_once(kek, clock) -> None:
    """The scheduler's first rotation can reach an empty store before any broker node has
    bootstrapped a key: the broker must still be able to sign at once, not after the lead."""
    store = MemoryKeyRecords()
    ring = RedisKeyRing(store, kek, max_token_ttl_seconds=MAX_TTL, clock=clock)
    assert not ring.due_for_rotation(rotation_days=30)  # bootstrapping is the broker's job
    result = ring.rotate(emergency=False)
    assert result["previous"] is None
    assert result["activate_at"] == clock.now()
    assert node(store, kek, clock).active.kid == result["kid"]
