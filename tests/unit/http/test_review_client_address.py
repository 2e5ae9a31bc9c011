"""The client address the per-address limit counts: the TCP peer unless the operator names the
proxies in front (ERRAND_TRUSTED_PROXIES or ERRAND_TRUSTED_PROXY_HOPS); behind a trusted proxy
each caller has its own bucket, a header from anyone else is ignored, and IPv6 callers are
counted per /64 (one host or site can hold a whole /64 and rotate through it)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.app import create_app
from broker.clock import FixedClock
from broker.settings import SettingsError, load_settings
from tests.support.builders import ADMIN_TOKEN, UNIT_ISSUER, fake_services, make_config

PER_ADDRESS = 3
PROXY = "10.0.0.5"
BASE_ENV = {
    "ERRAND_CONFIG": "unused.yaml",
    "REDIS_URL": "redis://fake",
    "ERRAND_SIGNING_KEY_DIR": "unused",
}


def _limits(raw: dict[str, Any]) -> None:
    raw["broker"]["limits"] = {
        "window_seconds": 60,
        "per_address": PER_ADDRESS,
        "per_issuer": 0,
        "per_identity": 0,
        "max_live_grants_per_identity": 0,
    }


@pytest.fixture
def make_client(
    tmp_path: Path, key_dir: Path, clock: FixedClock, fetcher: Any
) -> Callable[..., Any]:
    """A test client for an app whose process settings come from `env` (as in production,
    where build_services keeps the settings it was built from)."""

    def make(**env: str) -> Any:
        settings = load_settings({**BASE_ENV, **env})
        admin = tmp_path / "admin-token"
        admin.write_text(ADMIN_TOKEN)
        svc = fake_services(
            make_config(UNIT_ISSUER, _limits), key_dir, clock=clock, fetcher=fetcher
        )
        svc.settings = settings  # the Runtime's settings: what the app reads proxy trust from
        return create_app(settings, services=svc).test_client()

    return make


def garbage(client: Any, peer: str, **headers: str) -> int:
    """A request refused before it names an issuer: it counts against the address only."""
    resp = client.post(
        "/token",
        data={"grant_type": "password"},
        environ_base={"REMOTE_ADDR": peer},
        headers=headers,
    )
    assert resp.status_code in (400, 429), resp.get_json()
    return int(resp.status_code)


def spend(client: Any, peer: str, **headers: str) -> None:
    """Use up one bucket: PER_ADDRESS refusals, then the limit."""
    assert [garbage(client, peer, **headers) for _ in range(PER_ADDRESS)] == [400] * PER_ADDRESS
    assert garbage(client, peer, **headers) == 429


# -- behind a trusted proxy -----------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"ERRAND_TRUSTED_PROXIES": "10.0.0.0/24"},
        {"ERRAND_TRUSTED_PROXIES": "192.0.2.1, 10.0.0.5"},
        {"ERRAND_TRUSTED_PROXY_HOPS": "1"},
    ],
    ids=["cidr", "list", "hops"],
)
def test_behind_a_trusted_proxy_two_callers_get_separate_buckets(make_client, env) -> None:
    client = make_client(**env)
    spend(client, PROXY, **{"X-Forwarded-For": "198.51.100.7"})
    # Another caller behind the same proxy is not locked out by the first one's garbage.
    assert garbage(client, PROXY, **{"X-Forwarded-For": "198.51.100.8"}) == 400


def test_rfc7239_forwarded_when_the_proxy_writes_it(make_client) -> None:
    client = make_client(
        ERRAND_TRUSTED_PROXIES="10.0.0.0/24", ERRAND_TRUSTED_PROXY_HEADER="forwarded"
    )
    spend(client, PROXY, Forwarded='for="[2001:db8:cafe::17]:4711";proto=https')
    assert garbage(client, PROXY, Forwarded="for=198.51.100.8") == 400
    # The header the proxy does not write is the caller's to forge: ignored.
    assert garbage(client, PROXY, **{"X-Forwarded-For": "198.51.100.9"}) == 400
    assert garbage(client, PROXY, **{"X-Forwarded-For": "198.51.100.10"}) == 400
    # (both counted as the proxy itself: a fourth one from the proxy's own bucket)
    assert garbage(client, PROXY) == 400
    assert garbage(client, PROXY) == 429


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(make_client) -> None:
    client = make_client(ERRAND_TRUSTED_PROXIES="10.0.0.0/24")
    # Each request claims another address: all are the peer's.
    statuses = [
        garbage(client, "203.0.113.9", **{"X-Forwarded-For": f"198.51.100.{n}"})
        for n in range(PER_ADDRESS + 1)
    ]
    assert statuses == [400] * PER_ADDRESS + [429]


def test_what_a_caller_prepends_behind_the_proxy_is_ignored(make_client) -> None:
    """The proxy appends the real address; whatever the caller sent sits to its left."""
    client = make_client(ERRAND_TRUSTED_PROXIES="10.0.0.0/24")
    statuses = [
        garbage(client, PROXY, **{"X-Forwarded-For": f"192.0.2.{n}, 198.51.100.7"})
        for n in range(PER_ADDRESS + 1)
    ]
    assert statuses == [400] * PER_ADDRESS + [429]


def test_without_the_setting_headers_are_ignored(make_client) -> None:
    """Off by default: the TCP peer, as before."""
    client = make_client()
    statuses = [
        garbage(client, PROXY, **{"X-Forwarded-For": f"198.51.100.{n}"})
        for n in range(PER_ADDRESS + 1)
    ]
    assert statuses == [400] * PER_ADDRESS + [429]


def test_a_malformed_header_from_the_proxy_falls_back_to_the_peer(make_client) -> None:
    client = make_client(ERRAND_TRUSTED_PROXIES="10.0.0.0/24")
    for bad in ("unknown", "not an address", "198.51.100.7:99999", "[::1", ",,,", "\x00"):
        assert garbage(client, PROXY, **{"X-Forwarded-For": bad}) in (400, 429)
    assert garbage(client, PROXY) == 429  # all of them counted as the proxy's own


# -- IPv6 ----------------------------------------------------------------------------------


def test_two_ipv6_addresses_in_the_same_64_share_a_bucket(make_client) -> None:
    client = make_client()
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2:a:b:c:d"]
    assert [garbage(client, peer) for peer in same_64] == [400] * PER_ADDRESS
    assert garbage(client, "2001:db8:1:2::99") == 429
    # A different /64 (even the next one) has its own bucket.
    assert garbage(client, "2001:db8:1:3::1") == 400
    assert garbage(client, "2001:db8:1:2::1", **{}) == 429


def test_ipv6_behind_a_proxy_is_aggregated_too(make_client) -> None:
    client = make_client(ERRAND_TRUSTED_PROXY_HOPS="1")
    for n in range(PER_ADDRESS):
        assert garbage(client, PROXY, **{"X-Forwarded-For": f"2001:db8:9:9::{n + 1:x}"}) == 400
    assert garbage(client, PROXY, **{"X-Forwarded-For": "[2001:db8:9:9::ff]:443"}) == 429
    assert garbage(client, PROXY, **{"X-Forwarded-For": "2001:db8:9:a::1"}) == 400


def test_ipv4_mapped_ipv6_is_the_ipv4_address(make_client) -> None:
    client = make_client()
    assert garbage(client, "::ffff:198.51.100.7") == 400
    assert garbage(client, "198.51.100.7") == 400
    assert garbage(client, "::ffff:198.51.100.7") == 400
    assert garbage(client, "198.51.100.7") == 429
    assert garbage(client, "198.51.100.8") == 400


# -- the pure functions ----------------------------------------------------------------------


def trust(**kw: Any) -> Any:
    from broker.http.client_address import ProxyTrust

    if "networks" in kw:
        kw["networks"] = tuple(ipaddress.ip_network(n) for n in kw["networks"])
    return ProxyTrust(**kw)


@pytest.mark.parametrize(
    ("peer", "header", "kw", "expected"),
    [
        # off: always the peer
        ("198.51.100.1", "203.0.113.1", {}, "198.51.100.1"),
        # CIDR: the right-most address that is not a trusted proxy
        ("10.0.0.1", "203.0.113.1", {"networks": ["10.0.0.0/8"]}, "203.0.113.1"),
        ("10.0.0.1", "1.1.1.1, 203.0.113.1, 10.0.0.9", {"networks": ["10.0.0.0/8"]}, "203.0.113.1"),
        ("10.0.0.1", "10.0.0.7, 10.0.0.9", {"networks": ["10.0.0.0/8"]}, "10.0.0.7"),
        ("10.0.0.1", "", {"networks": ["10.0.0.0/8"]}, "10.0.0.1"),
        ("10.0.0.1", "garbage, 203.0.113.1", {"networks": ["10.0.0.0/8"]}, "203.0.113.1"),
        ("10.0.0.1", "203.0.113.1, garbage", {"networks": ["10.0.0.0/8"]}, "10.0.0.1"),
        ("10.0.0.1", "203.0.113.1:5555", {"networks": ["10.0.0.0/8"]}, "203.0.113.1"),
        ("10.0.0.1", "[2001:db8::1]:443", {"networks": ["10.0.0.0/8"]}, "2001:db8::/64"),
        ("10.0.0.1", "2001:db8::1", {"networks": ["10.0.0.0/8"]}, "2001:db8::/64"),
        ("198.51.100.1", "203.0.113.1", {"networks": ["10.0.0.0/8"]}, "198.51.100.1"),
        ("::ffff:10.0.0.1", "203.0.113.1", {"networks": ["10.0.0.0/8"]}, "203.0.113.1"),
        # hops: the Nth address from the right
        ("10.0.0.1", "1.1.1.1, 203.0.113.1", {"hops": 1}, "203.0.113.1"),
        ("10.0.0.1", "1.1.1.1, 203.0.113.1, 10.0.0.2", {"hops": 2}, "203.0.113.1"),
        ("10.0.0.1", "203.0.113.1", {"hops": 2}, "10.0.0.1"),  # fewer hops than configured
        ("10.0.0.1", "unknown", {"hops": 1}, "10.0.0.1"),
        # RFC 7239 Forwarded
        (
            "10.0.0.1",
            'for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.1',
            {"networks": ["10.0.0.0/8"], "header": "forwarded"},
            "2001:db8:cafe::/64",
        ),
        (
            "10.0.0.1",
            "For=203.0.113.43;Proto=http",
            {"hops": 1, "header": "forwarded"},
            "203.0.113.43",
        ),
        ("10.0.0.1", "for=unknown", {"hops": 1, "header": "forwarded"}, "10.0.0.1"),
        ("10.0.0.1", "for=_hidden", {"hops": 1, "header": "forwarded"}, "10.0.0.1"),
        ("10.0.0.1", "proto=https", {"hops": 1, "header": "forwarded"}, "10.0.0.1"),
        ("10.0.0.1", 'for="1.2.3.4', {"hops": 1, "header": "forwarded"}, "10.0.0.1"),
        ("10.0.0.1", 'for="x, for=203.0.113.9', {"hops": 1, "header": "forwarded"}, "203.0.113.9"),
        # the peer: IPv6 per /64, an unparseable one kept as it is
        ("2001:db8:1:2:3:4:5:6", "", {}, "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "", {}, "fe80::/64"),
        ("", "203.0.113.1", {"hops": 1}, ""),
    ],
)
def test_address_key(peer: str, header: str, kw: dict[str, Any], expected: str) -> None:
    from broker.http.client_address import address_key

    assert address_key(peer, header, trust(**kw)) == expected


# -- settings --------------------------------------------------------------------------------


def test_settings_parse_the_proxy_trust() -> None:
    s = load_settings(
        {**BASE_ENV, "ERRAND_TRUSTED_PROXIES": " 10.0.0.0/8 , 2001:db8::/32,192.0.2.1"}
    )
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]
    assert s.trusted_proxy_hops == 0 and s.trusted_proxy_header == "x-forwarded-for"
    s = load_settings({**BASE_ENV, "ERRAND_TRUSTED_PROXY_HOPS": "2"})
    assert s.trusted_proxy_hops == 2 and s.trusted_proxies == ()
    s = load_settings(BASE_ENV)
    assert s.trusted_proxies == () and s.trusted_proxy_hops == 0


@pytest.mark.parametrize(
    "env",
    [
        {"ERRAND_TRUSTED_PROXIES": "10.0.0.0/8", "ERRAND_TRUSTED_PROXY_HOPS": "1"},
        {"ERRAND_TRUSTED_PROXIES": "10.0.0.1/8"},  # host bits set: which was meant?
        {"ERRAND_TRUSTED_PROXIES": "proxy.internal"},
        {"ERRAND_TRUSTED_PROXIES": "0.0.0.0/0"},  # everyone may choose their address
        {"ERRAND_TRUSTED_PROXIES": "::/0"},
        {"ERRAND_TRUSTED_PROXIES": "10.0.0.0/8,,"},
        {"ERRAND_TRUSTED_PROXY_HOPS": "-1"},
        {"ERRAND_TRUSTED_PROXY_HOPS": "two"},
        {"ERRAND_TRUSTED_PROXY_HOPS": "100"},
        {"ERRAND_TRUSTED_PROXY_HEADER": "forwarded"},  # a header, but nobody trusted
        {"ERRAND_TRUSTED_PROXY_HOPS": "1", "ERRAND_TRUSTED_PROXY_HEADER": "x-real-ip"},
    ],
)
def test_contradictory_proxy_settings_are_refused_at_start_up(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings({**BASE_ENV, **env})
