"""X-Forwarded-For / Forwarded parsing, whatever the caller sends: never an exception, never
an address from a header when the peer is not a trusted proxy, never an address that is
neither the peer nor in the header."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.http.client_address import ProxyTrust, address_key, limit_key, parse_node

SETTINGS = settings(max_examples=300)

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
addresses = st.one_of(ipv4, ipv6)
trusted_peers = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"), st.ip_addresses(network="2001:db8:ffff::/48")
)


def is_trusted(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    plain = (a.ipv4_mapped if a.version == 6 else None) or a
    return any(plain in n for n in TRUSTED if n.version == plain.version)


untrusted_peers = addresses.filter(lambda a: not is_trusted(a))


def _node(a: ipaddress.IPv4Address | ipaddress.IPv6Address, style: int) -> str:
    if a.version == 4:
        return (str(a), f"{a}:{style * 97}", f'"{a}:{style}"')[style % 3]
    return (str(a), f"[{a}]", f"[{a}]:{style}")[style % 3]


# Fragments a caller (or a confused proxy) could send: addresses in every spelling, RFC 7239
# words, separators, quotes and junk.
fragments = st.one_of(
    st.builds(_node, addresses, st.integers(0, 70000)),
    st.sampled_from(
        [",", ";", "=", '"', "[", "]", ":", "for=", "For=", "by=", "proto=https", "unknown"]
    ),
    st.sampled_from(["_hidden", "for=unknown", 'for="[', "\\", " ", "\t", "%eth0", "::ffff:"]),
    st.text(max_size=12),
)
headers = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.lists(fragments, max_size=25).map("".join),
    st.lists(st.builds(_node, addresses, st.integers(0, 9)), max_size=6).map(", ".join),
    st.lists(
        st.builds(lambda a, s: f"for={_node(a, s)}", addresses, st.integers(0, 9)), max_size=6
    ).map(", ".join),
)
peers = st.one_of(addresses.map(str), st.text(max_size=40), st.just(""))
trusts = st.one_of(
    st.builds(
        ProxyTrust,
        networks=st.just(TRUSTED),
        header=st.sampled_from(["x-forwarded-for", "forwarded"]),
    ),
    st.builds(
        ProxyTrust,
        hops=st.integers(1, 5),
        header=st.sampled_from(["x-forwarded-for", "forwarded"]),
    ),
    st.just(ProxyTrust()),
)


def _addresses_in(text: str) -> set[str]:
    """Every limit key of an address spelled anywhere in `text` (generously tokenised)."""
    found = set()
    for variant in (text, text.replace("\\", "")):
        for token in variant.replace(";", ",").replace("=", ",").replace('"', ",").split(","):
            node = parse_node(token.strip())
            if node is not None:
                found.add(limit_key(node))
    return found


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(peer=peers, header=headers, trust=trusts)
def test_never_raises_and_returns_the_peer_or_a_header_address(
    peer: str, header: str | None, trust: ProxyTrust
) -> None:
    key = address_key(peer, header, trust)
    assert isinstance(key, str)
    peer_node = parse_node(peer)
    peer_key = limit_key(peer_node) if peer_node is not None else peer
    assert key == peer_key or key in _addresses_in(header or ""), (key, peer, header)


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(peer=untrusted_peers, header=headers, kind=st.sampled_from(["x-forwarded-for", "forwarded"]))
def test_an_untrusted_peer_never_chooses_its_address(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address, header: str | None, kind: str
) -> None:
    trust = ProxyTrust(networks=TRUSTED, header=kind)
    assert address_key(str(peer), header, trust) == limit_key(peer)


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(peer=addresses, header=headers)
def test_off_means_the_peer(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address, header: str | None
) -> None:
    assert address_key(str(peer), header, ProxyTrust()) == limit_key(peer)


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(
    peer=trusted_peers,
    chain=st.lists(addresses, min_size=1, max_size=5),
    injected=st.lists(fragments, max_size=10).map("".join),
)
def test_behind_a_trusted_proxy_the_right_most_untrusted_address_wins(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    chain: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    injected: str,
) -> None:
    """Whatever the caller put in front, the proxies' own appended entries decide."""
    trust = ProxyTrust(networks=TRUSTED)
    header = ", ".join([injected, *map(str, chain)])
    untrusted = [a for a in chain if not is_trusted(a)]
    key = address_key(str(peer), header, trust)
    if untrusted:
        assert key == limit_key(untrusted[-1])


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(
    peer=addresses,
    hops=st.integers(1, 4),
    chain=st.lists(addresses, min_size=0, max_size=6),
    injected=st.lists(fragments, max_size=10).map("".join),
)
def test_hops_read_only_the_entries_the_proxies_appended(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    hops: int,
    chain: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    injected: str,
) -> None:
    header = ", ".join([injected, *map(str, chain)])
    key = address_key(str(peer), header, ProxyTrust(hops=hops))
    if len(chain) >= hops:
        assert key == limit_key(chain[-hops])


@SETTINGS
@given(a=ipv6, b=ipv6)
def test_ipv6_keys_are_the_64(a: ipaddress.IPv6Address, b: ipaddress.IPv6Address) -> None:
    if a.ipv4_mapped or b.ipv4_mapped:
        return
    same = int(a) >> 64 == int(b) >> 64
    assert (limit_key(a) == limit_key(b)) == same
    assert limit_key(a).endswith("/64")


@SETTINGS
@given(a=ipv4)
def test_ipv4_mapped_is_the_ipv4_key(a: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{a}")
    assert limit_key(mapped) == limit_key(a) == str(a)
    assert address_key(str(mapped), None, ProxyTrust()) == str(a)
