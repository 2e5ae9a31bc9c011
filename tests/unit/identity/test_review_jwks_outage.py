"""An issuer whose keys cannot be fetched makes requests fail fast, on every worker.

Before: on a cold cache, a worker that lost the Redis refresh lock waited for a mirror that
would never come, for fetch_timeout + 0.5 s (3.5 s by default) on every request, and any
caller could trigger it by naming that issuer in `iss`. Now the lock holder marks its fetch
in flight (in the same command that takes the lock) and records a failure for the cooldown;
a waiter stops at the mirror, at a failure record, or when nothing is in flight any more,
and never waits past the fetch deadline.

"Workers" are JwksCache instances sharing one fakeredis server (fakeredis follows the test's
FixedClock, tests/unit/conftest.py). Waits use an injected sleep that advances that clock:
no test here sleeps on the real clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from broker.clock import FixedClock
from broker.domain.models import TrustedIssuer
from broker.identity.errors import KeysUnavailable
from broker.identity.jwks import POLL_SECONDS, JwksCache, fetch_deadline
from broker.store.jwks_mirror import JwksMirror
from tests.support.builders import UNIT_ISSUER, StaticFetcher, fake_services, make_app
from tests.support.clocks import Sleeper
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error

ISSUER = TrustedIssuer(
    id="gha",
    issuer="https://issuer.example",
    audience="errand",
    jwks_uri="https://issuer.example/jwks",
    algorithms=("ES256",),
    refresh_cooldown_seconds=60,
    fetch_timeout_seconds=3.0,
)
DOWN = KeysUnavailable("the issuer's keys are unavailable", debug="HTTP 502")


class BlockingFetcher(StaticFetcher):
    """A fetch that stays in flight until the test releases it (then answers or fails)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        super().__init__(jwks)
        self.started = threading.Event()
        self.release = threading.Event()

    def fetch(self, issuer: TrustedIssuer) -> dict[str, Any]:
        self.started.set()
        assert self.release.wait(10), "the test never released the fetch"
        return super().fetch(issuer)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def jwks(issuer_key: Any) -> dict[str, Any]:
    return {"keys": [issuer_key.public_jwk()]}


def worker(server: fakeredis.FakeServer, fetcher: Any, clock: FixedClock, t: Sleeper) -> Any:
    mirror = JwksMirror(fakeredis.FakeStrictRedis(server=server, decode_responses=True))
    return JwksCache(fetcher, mirror, clock, sleep=t.sleep, monotonic=t.monotonic)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.regression
def test_review_cold_cache_issuer_down_the_lock_loser_fails_fast(
    server: fakeredis.FakeServer, clock: FixedClock, jwks: dict[str, Any], issuer_key: Any
) -> None:
    fetcher_a, fetcher_b = StaticFetcher(jwks), StaticFetcher(jwks)
    fetcher_a.fail = fetcher_b.fail = DOWN
    time_a, time_b = Sleeper(clock), Sleeper(clock)
    a = worker(server, fetcher_a, clock, time_a)
    b = worker(server, fetcher_b, clock, time_b)

    with pytest.raises(KeysUnavailable):
        a.key_for(ISSUER, issuer_key.kid)  # wins the lock, fetches, fails, records it
    started = time.monotonic()
    for _ in range(20):  # every request naming the issuer, for the whole cooldown
        with pytest.raises(KeysUnavailable):
            b.key_for(ISSUER, issuer_key.kid)
        clock.advance(2)
    assert time.monotonic() - started < 1.0  # before: 3.5 s per request
    assert time_b.slept == 0.0  # nothing was in flight: no wait at all
    assert (fetcher_a.calls, fetcher_b.calls) == (1, 0)  # one fetch per cooldown, fleet-wide

    # The cooldown over, the next request may fetch again; the issuer is back.
    clock.advance(60)
    fetcher_b.fail = None
    assert b.key_for(ISSUER, issuer_key.kid).kid == issuer_key.kid
    assert fetcher_b.calls == 1


@pytest.mark.regression
def test_review_a_fetch_really_in_flight_is_waited_for(
    server: fakeredis.FakeServer, clock: FixedClock, jwks: dict[str, Any], issuer_key: Any
) -> None:
    fetcher_a = BlockingFetcher(jwks)
    a = worker(server, fetcher_a, clock, Sleeper(clock))
    thread, outcome = in_thread(lambda: a.key_for(ISSUER, issuer_key.kid))
    assert fetcher_a.started.wait(10)  # A holds the lock and its fetch is in flight

    def a_finishes() -> None:
        fetcher_a.release.set()
        thread.join(10)

    time_b = Sleeper(clock, on_sleep=a_finishes)
    fetcher_b = StaticFetcher(jwks)
    b = worker(server, fetcher_b, clock, time_b)
    assert b.key_for(ISSUER, issuer_key.kid).kid == issuer_key.kid  # adopted A's keys
    assert outcome.get("value") is not None, outcome
    assert fetcher_b.calls == 0
    assert 0 < time_b.slept <= POLL_SECONDS  # stopped as soon as the mirror appeared


@pytest.mark.regression
def test_review_a_waiter_stops_at_the_failure_record(
    server: fakeredis.FakeServer, clock: FixedClock, jwks: dict[str, Any], issuer_key: Any
) -> None:
    fetcher_a = BlockingFetcher(jwks)
    fetcher_a.fail = DOWN
    a = worker(server, fetcher_a, clock, Sleeper(clock))
    thread, outcome = in_thread(lambda: a.key_for(ISSUER, issuer_key.kid))
    assert fetcher_a.started.wait(10)

    def a_fails() -> None:
        fetcher_a.release.set()
        thread.join(10)

    time_b = Sleeper(clock, on_sleep=a_fails)
    b = worker(server, StaticFetcher(jwks), clock, time_b)
    with pytest.raises(KeysUnavailable):
        b.key_for(ISSUER, issuer_key.kid)
    assert isinstance(outcome.get("error"), KeysUnavailable)
    assert time_b.slept <= POLL_SECONDS


@pytest.mark.regression
def test_review_a_lock_holder_that_died_is_waited_for_at_most_the_fetch_deadline(
    server: fakeredis.FakeServer, clock: FixedClock, jwks: dict[str, Any], issuer_key: Any
) -> None:
    mirror = JwksMirror(fakeredis.FakeStrictRedis(server=server, decode_responses=True))
    assert mirror.try_lock_refresh(ISSUER.id, 60)  # took the lock, marked in flight, died
    time_b = Sleeper(clock)
    b = worker(server, StaticFetcher(jwks), clock, time_b)
    with pytest.raises(KeysUnavailable):
        b.key_for(ISSUER, issuer_key.kid)
    assert time_b.slept <= fetch_deadline(ISSUER) + POLL_SECONDS
    # Later requests in the same cooldown do not wait again: nothing is in flight any more.
    before = time_b.slept
    with pytest.raises(KeysUnavailable):
        b.key_for(ISSUER, issuer_key.kid)
    assert time_b.slept == before


# -- through POST /token: two web workers on one Redis ------------------------------------------


@pytest.mark.regression
def test_review_issuer_down_every_worker_answers_503_at_once(
    config: Any,
    key_dir: Path,
    clock: FixedClock,
    jwks: dict[str, Any],
    tmp_path: Path,
    subject: Callable[..., str],
) -> None:
    server = fakeredis.FakeServer()
    fetchers = [StaticFetcher(jwks), StaticFetcher(jwks)]
    clients = []
    for fetcher in fetchers:
        fetcher.fail = DOWN
        svc = fake_services(config, key_dir, clock=clock, fetcher=fetcher, server=server)
        clients.append(make_app(svc, tmp_path).test_client())
    assert config.issuers["gha"].issuer == UNIT_ISSUER

    first = clients[0].post("/token", data=deploy_form(subject()))
    assert_oauth_error(first, 503, "temporarily_unavailable")
    started = time.monotonic()
    for _ in range(3):
        resp = clients[1].post("/token", data=deploy_form(subject()))
        assert_oauth_error(resp, 503, "temporarily_unavailable")
        assert int(resp.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 1.0  # before: 3.5 s each
    assert [f.calls for f in fetchers] == [1, 0]
