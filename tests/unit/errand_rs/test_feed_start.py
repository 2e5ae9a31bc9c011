"""A resource server's readiness can turn healthy at start-up: the Flask and WSGI adapters
start the revocation feed when they are set up, and `feed.status()` starts it in a process
where it is not running, so `/readyz` does not wait for the first protected request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from errand_rs import ErrandMiddleware, ErrandVerifier, RevocationFeed
from errand_rs.flask import ErrandAuth
from tests.support.fake_broker import RS_CLIENT_ID, RS_CLIENT_SECRET, FakeBroker

SYNC_WAIT_SECONDS = 5.0  # bounded wait for the real polling thread against the fake broker


@pytest.fixture
def polling_feed(published: FakeBroker) -> Iterator[RevocationFeed]:
    """A feed with its own background thread (not yet started)."""
    feed = RevocationFeed(published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, poll_interval_seconds=0.05)
    yield feed
    feed.stop()


def _app_with_readyz(feed: RevocationFeed) -> Flask:
    app = Flask("orders")

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, Any], int]:
        status = feed.status()
        return status, 200 if status["healthy"] else 503

    return app


def test_flask_adapter_starts_the_feed_at_init(
    published: FakeBroker, verifier: ErrandVerifier, polling_feed: RevocationFeed
) -> None:
    app = _app_with_readyz(polling_feed)
    ErrandAuth(app, verifier=verifier, feed=polling_feed)
    # No request at all yet, protected or not: the feed syncs on its own.
    assert polling_feed.wait_synced(SYNC_WAIT_SECONDS)
    assert published.feed_requests
    assert app.test_client().get("/readyz").status_code == 200


def test_flask_adapter_with_init_app_starts_the_feed(
    verifier: ErrandVerifier, polling_feed: RevocationFeed
) -> None:
    auth = ErrandAuth(verifier=verifier, feed=polling_feed)
    assert not polling_feed.wait_synced(0)  # nothing starts before init_app
    auth.init_app(_app_with_readyz(polling_feed))
    assert polling_feed.wait_synced(SYNC_WAIT_SECONDS)


def test_wsgi_middleware_starts_the_feed_at_init(
    published: FakeBroker, verifier: ErrandVerifier, polling_feed: RevocationFeed
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    ErrandMiddleware(app, verifier, polling_feed, exempt_paths=["/readyz"])
    assert polling_feed.wait_synced(SYNC_WAIT_SECONDS)
    assert polling_feed.status()["healthy"] is True


def test_status_starts_polling_for_a_readiness_probe(polling_feed: RevocationFeed) -> None:
    first = polling_feed.status()  # a probe before anything else in this process
    assert first["healthy"] is False  # not synced yet: not ready, and nothing pretends it is
    assert polling_feed.wait_synced(SYNC_WAIT_SECONDS)
    assert polling_feed.status()["healthy"] is True


def test_a_feed_without_background_is_never_started(
    published: FakeBroker, verifier: ErrandVerifier
) -> None:
    feed = RevocationFeed(published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False)
    ErrandAuth(Flask("orders"), verifier=verifier, feed=feed)
    ErrandMiddleware(lambda e, s: [b""], verifier, feed)
    assert feed.status()["healthy"] is False
    assert not feed.wait_synced(0.2)
    assert published.feed_requests == []
    feed.sync_once()  # the caller drives it
    assert feed.status()["healthy"] is True


def test_a_stopped_feed_stays_stopped(published: FakeBroker, polling_feed: RevocationFeed) -> None:
    polling_feed.start()
    assert polling_feed.wait_synced(SYNC_WAIT_SECONDS)
    polling_feed.stop()
    polling_feed.status()
    assert polling_feed.ensure_started() is False
