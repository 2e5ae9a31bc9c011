"""ErrandVerifier and RevocationFeed refuse a plain-http broker unless it is on a loopback
address: the JWKS decides which tokens are genuine and the feed carries the resource server's
client secret, so neither may travel in clear text to another host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from errand_rs import ErrandVerifier, RevocationFeed
from tests.support.fake_broker import RS_AUDIENCE, RS_CLIENT_ID, RS_CLIENT_SECRET

pytestmark = pytest.mark.regression

PLAIN_HTTP_ELSEWHERE = [
    "http://example.com",
    "http://errand.internal:8080",
    "http://127.0.0.1.nip.io",  # a name that merely starts like a loopback address
    "http://localhost.example.com",
    "http://10.0.0.1",
    "ftp://example.com",
]
LOOPBACK = ["http://127.0.0.1:8080", "http://127.0.0.2", "http://[::1]:9000", "http://localhost"]


@pytest.fixture
def no_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []

    def record(self: requests.Session, method: str, url: str, *a: Any, **kw: Any) -> Any:
        sent.append(url)
        raise AssertionError(f"a request was sent to {url}")

    monkeypatch.setattr(requests.Session, "request", record)
    return sent


@pytest.mark.parametrize("issuer", PLAIN_HTTP_ELSEWHERE)
def test_verifier_refuses_a_plain_http_issuer(issuer: str, no_requests: list[str]) -> None:
    with pytest.raises(ValueError, match="https"):
        ErrandVerifier(issuer, RS_AUDIENCE)
    assert no_requests == []


@pytest.mark.parametrize("issuer", PLAIN_HTTP_ELSEWHERE)
def test_feed_refuses_a_plain_http_issuer(issuer: str, no_requests: list[str]) -> None:
    with pytest.raises(ValueError, match="https"):
        RevocationFeed(issuer, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False)
    assert no_requests == []


def test_plain_http_endpoint_overrides_are_refused_too(no_requests: list[str]) -> None:
    with pytest.raises(ValueError, match="https"):
        ErrandVerifier("https://errand.example", RS_AUDIENCE, jwks_uri="http://cdn.example/jwks")
    with pytest.raises(ValueError, match="https"):
        RevocationFeed(
            "https://errand.example",
            RS_CLIENT_ID,
            RS_CLIENT_SECRET,
            revocations_url="http://errand.example/revocations",
            background=False,
        )
    assert no_requests == []


@pytest.mark.parametrize("issuer", [*LOOPBACK, "https://errand.example"])
def test_https_and_loopback_http_are_accepted(issuer: str) -> None:
    ErrandVerifier(issuer, RS_AUDIENCE)
    RevocationFeed(issuer, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False).stop()


def test_a_loopback_broker_still_verifies(published: Any, mint: Callable[..., str]) -> None:
    verifier = ErrandVerifier(published.url, RS_AUDIENCE)
    assert verifier.verify(mint()).task_id
    feed = RevocationFeed(published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False)
    feed.sync_once()
    feed.stop()
