"""broker/identity/jwks.py: bounded refreshes, stale keys on failure, 503 only when cold.

The HTTP-level tests run on fakeredis, which (tests/unit/conftest.py) follows the FixedClock,
so the cross-process refresh lock (SET NX EX) expires when the test advances the clock."""

from __future__ import annotations

import secrets
from typing import Any

import fakeredis
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from broker.domain.models import TrustedIssuer
from broker.identity.errors import KeysUnavailable, UnknownKey
from broker.identity.jwks import POLL_SECONDS, JwksCache, fetch_deadline, parse_jwks
from broker.store.jwks_mirror import JwksMirror
from tests.support.builders import UNIT_ISSUER, StaticFetcher, gha_token
from tests.support.clocks import Sleeper
from tests.support.http import assert_oauth_error
from tests.support.jws import new_es256_key
from tests.support.redis import grant_state_keys

ISSUER = TrustedIssuer(
    id="gha",
    issuer="https://issuer.example",
    audience="errand",
    jwks_uri="https://issuer.example/jwks",
    algorithms=("ES256",),
    refresh_cooldown_seconds=60,
    jwks_max_age_seconds=3600,
    jwks_stale_seconds=86400,
)


def random_kid_token(subject: Any) -> str:
    return subject(_headers={"kid": "kid-" + secrets.token_hex(8)}, jti=secrets.token_hex(8))


# -- through POST /token ---------------------------------------------------------------------


def test_unknown_kid_is_invalid_request(exchange, subject, svc) -> None:
    resp = exchange(random_kid_token(subject))
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "key" in body["error_description"]
    assert grant_state_keys(svc) == set()


def test_random_kids_cause_at_most_one_fetch_per_cooldown(
    exchange, subject, fetcher, clock
) -> None:
    assert exchange().status_code == 200
    assert fetcher.calls == 1
    for _ in range(40):
        assert exchange(random_kid_token(subject)).status_code == 400
    assert fetcher.calls <= 2  # at most one extra fetch in this cooldown window
    baseline = fetcher.calls

    clock.advance(61)  # past refresh_cooldown_seconds: one more refresh is allowed
    for _ in range(40):
        assert exchange(random_kid_token(subject)).status_code == 400
    assert fetcher.calls == baseline + 1

    # The same unknown kid again is answered from the negative cache, without a fetch.
    clock.advance(61)
    kid = "kid-repeated"
    for _ in range(10):
        assert exchange(subject(_headers={"kid": kid}, jti=secrets.token_hex(8))).status_code == 400
    assert fetcher.calls == baseline + 2
    # Valid tokens keep working throughout.
    assert exchange().status_code == 200


def test_cached_keys_are_kept_when_a_refresh_fails(exchange, fetcher, clock, svc) -> None:
    assert exchange().status_code == 200
    clock.advance(3601)  # past jwks_max_age_seconds: the next use tries a refresh
    fetcher.fail = KeysUnavailable("the issuer's keys are unavailable", debug="HTTP 502")
    resp = exchange()
    assert resp.status_code == 200, resp.get_json()
    assert fetcher.calls == 2  # the refresh was attempted ...
    assert exchange().status_code == 200
    assert fetcher.calls == 2  # ... and not retried inside the cooldown

    # Recovery without a restart once the issuer answers again.
    fetcher.fail = None
    clock.advance(61)
    assert exchange().status_code == 200
    assert fetcher.calls == 3


def test_keys_past_the_stale_limit_are_not_used(exchange, fetcher, clock) -> None:
    assert exchange().status_code == 200
    fetcher.fail = KeysUnavailable("the issuer's keys are unavailable")
    clock.advance(86401)  # beyond jwks_stale_seconds (and the Redis mirror's TTL)
    resp = exchange()
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert resp.headers["Retry-After"].isdigit()


def test_cold_cache_and_failing_issuer_is_503_with_retry_after(exchange, fetcher, svc) -> None:
    fetcher.fail = KeysUnavailable("the issuer's keys are unavailable", debug="timeout")
    resp = exchange()
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert int(resp.headers["Retry-After"]) > 0
    assert grant_state_keys(svc) == set()
    # While the refresh lock is held, a retry is still a 503, without hammering the issuer.
    assert exchange().status_code == 503
    assert fetcher.calls == 1


def test_cold_cache_recovers_after_the_cooldown(exchange, fetcher, clock) -> None:
    fetcher.fail = KeysUnavailable("the issuer's keys are unavailable")
    assert exchange().status_code == 503
    fetcher.fail = None
    clock.advance(61)
    assert exchange().status_code == 200


def test_a_new_key_is_picked_up_after_rotation(
    exchange, subject, fetcher, issuer_key, clock
) -> None:
    assert exchange().status_code == 200
    rotated = new_es256_key()
    fetcher.jwks = {"keys": [issuer_key.public_jwk(), rotated.public_jwk()]}

    token = gha_token(rotated, UNIT_ISSUER, now=clock.now())
    # The unknown kid triggers a refresh only once the cooldown since the last fetch is over.
    clock.advance(61)
    assert exchange(token).status_code == 200
    assert fetcher.calls == 2


# -- JwksCache directly ------------------------------------------------------------------------


@pytest.fixture
def redis_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def mirror_on(server: fakeredis.FakeServer) -> JwksMirror:
    return JwksMirror(fakeredis.FakeStrictRedis(server=server, decode_responses=True))


@pytest.fixture
def fake_sleep(clock) -> Sleeper:
    return Sleeper(clock)


@pytest.fixture
def direct(issuer_key, clock, redis_server, fake_sleep):
    """A JwksCache on a fakeredis mirror that follows `clock` (tests/unit/conftest.py)."""
    shared = mirror_on(redis_server)
    fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
    cache = JwksCache(fetcher, shared, clock, sleep=fake_sleep, monotonic=clock.now)
    return cache, fetcher, shared, clock


def test_cache_serves_a_known_kid_without_refetching(direct, issuer_key) -> None:
    cache, fetcher, _shared, clock = direct
    for _ in range(5):
        assert cache.key_for(ISSUER, issuer_key.kid).alg == "ES256"
    assert fetcher.calls == 1
    clock.advance(3599)
    cache.key_for(ISSUER, issuer_key.kid)
    assert fetcher.calls == 1


def test_many_unknown_kids_are_bounded_per_cooldown(direct, issuer_key) -> None:
    cache, fetcher, _shared, clock = direct
    cache.key_for(ISSUER, issuer_key.kid)
    for i in range(200):
        with pytest.raises(UnknownKey):
            cache.key_for(ISSUER, f"random-{i}")
    assert fetcher.calls == 1
    clock.advance(61)  # Redis expires a key strictly after its TTL, as fakeredis does
    for i in range(200):
        with pytest.raises(UnknownKey):
            cache.key_for(ISSUER, f"again-{i}")
    assert fetcher.calls == 2


def test_redis_down_falls_back_to_a_per_process_cooldown(direct, issuer_key, redis_server) -> None:
    cache, fetcher, _shared, clock = direct
    redis_server.connected = False
    assert cache.key_for(ISSUER, issuer_key.kid).kid == issuer_key.kid
    for i in range(50):
        with pytest.raises(UnknownKey):
            cache.key_for(ISSUER, f"k{i}")
    assert fetcher.calls == 1
    clock.advance(61)
    with pytest.raises(UnknownKey):
        cache.key_for(ISSUER, "later")
    assert fetcher.calls == 2


def test_a_second_process_adopts_the_mirrored_keys(direct, issuer_key, redis_server) -> None:
    cache, _fetcher, _shared, clock = direct
    cache.key_for(ISSUER, issuer_key.kid)
    other_fetcher = StaticFetcher({"keys": []})
    other = JwksCache(other_fetcher, mirror_on(redis_server), clock)
    assert other.key_for(ISSUER, issuer_key.kid).kid == issuer_key.kid
    assert other_fetcher.calls == 0


def test_cold_cache_with_lock_held_elsewhere_is_keys_unavailable(
    direct, issuer_key, fake_sleep
) -> None:
    """Another node took the lock (its fetch is in flight) but never mirrors keys: we wait
    for it, on the injected clock, no longer than the fetch deadline."""
    cache, fetcher, shared, _clock = direct
    assert shared.try_lock_refresh(ISSUER.id, 60)  # another node is refreshing
    with pytest.raises(KeysUnavailable):
        cache.key_for(ISSUER, issuer_key.kid)
    assert fetcher.calls == 0
    assert fake_sleep.slept <= fetch_deadline(ISSUER) + POLL_SECONDS


def test_no_kid_is_ambiguous_with_several_keys(direct, issuer_key) -> None:
    cache, fetcher, _shared, _clock = direct
    fetcher.jwks = {"keys": [issuer_key.public_jwk(), new_es256_key().public_jwk()]}
    with pytest.raises(UnknownKey):
        cache.key_for(ISSUER, None)


# -- parse_jwks ------------------------------------------------------------------------------


def test_parse_jwks_keeps_only_usable_signing_keys(issuer_key) -> None:
    good = issuer_key.public_jwk()
    enc = {**new_es256_key().public_jwk(), "use": "enc", "kid": "enc"}
    wrong_alg = {**new_es256_key().public_jwk(), "alg": "ES384", "kid": "es384"}
    hmac_key = {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "oct"}
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    small = {
        **__import__("json").loads(RSAAlgorithm.to_jwk(small_rsa)),
        "kid": "rsa1024",
        "alg": "RS256",
    }
    junk = {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "junk"}
    issuer = TrustedIssuer(**{**ISSUER.__dict__, "algorithms": ("ES256", "RS256")})
    keys = parse_jwks({"keys": [good, enc, wrong_alg, hmac_key, small, junk, "nonsense"]}, issuer)
    assert set(keys) == {issuer_key.kid}


def test_parse_jwks_strips_private_members(issuer_key) -> None:
    import json

    from jwt.algorithms import ECAlgorithm

    private_jwk = json.loads(ECAlgorithm.to_jwk(issuer_key.private_key))
    private_jwk.update(kid="with-d", alg="ES256")
    keys = parse_jwks({"keys": [private_jwk]}, ISSUER)
    assert not hasattr(keys["with-d"].key, "private_numbers")
    assert "key=" not in repr(keys["with-d"])
