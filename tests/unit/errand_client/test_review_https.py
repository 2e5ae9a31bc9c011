"""The CI client's broker URL: https, or plain http only to a loopback address (all of
127.0.0.0/8, ::1, localhost); a refused URL sends nothing."""

from __future__ import annotations

import pytest

from errand_client import ci
from errand_client.client import ErrandClient, check_url

pytestmark = pytest.mark.regression


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.2:8080",
        "http://127.1.2.3",
        "http://[::1]:80",
        "http://localhost:8080",
        "http://LOCALHOST",
        "https://errand.example",
    ],
)
def test_https_or_any_loopback_address_is_accepted(url: str) -> None:
    assert check_url(url) == url.rstrip("/")
    ErrandClient(url, lambda: "unused")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://127.0.0.1.nip.io",
        "http://localhost.example.com",
        "http://[::ffff:8.8.8.8]",
        "http://0.0.0.0:8080",
    ],
)
def test_plain_http_elsewhere_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        check_url(url)


def test_complete_refuses_plain_http_before_sending(broker, sleeps, ctx_factory, tmp_path) -> None:
    env = {"ERRAND_TOKEN": "eyJ.env-token", "ERRAND_STATE_FILE": str(tmp_path / "s.json")}
    ctx = ctx_factory(env, sleeps)
    code = ci.main(["complete", "--url=http://example.com"], ctx)
    assert code == 2 and "must use https" in ctx.out.getvalue()
    assert broker.complete_requests == []
    ctx = ctx_factory(env, sleeps)
    assert ci.main(["complete", f"--url={broker.url}"], ctx) == 0  # loopback http
    assert broker.complete_requests == ["Bearer eyJ.env-token"]
