"""Who is calling, as the per-address rate limit and the audit log count it.

Off by default: the TCP peer, nothing a caller can write. Behind a TLS proxy every caller
shares the proxy's address, so the operator may name the proxies (ERRAND_TRUSTED_PROXIES, a
list of networks, or ERRAND_TRUSTED_PROXY_HOPS, a count) and the one header they write
(ERRAND_TRUSTED_PROXY_HEADER: X-Forwarded-For, or RFC 7239 Forwarded).

- A header is read only when the peer is a trusted proxy (with a hop count, every peer is:
  the broker must then be reachable through the proxies only).
- Proxies append, so what the caller wrote sits on the left: the client is the right-most
  address that is not a trusted proxy (or, with N hops, the Nth from the right). Nothing to
  the left of it is ever read, so a caller can neither choose its address nor, by sending
  garbage, push itself into the proxy's bucket.
- Only one header: reading both would let the caller add the one the proxy does not write.
- An entry that cannot be read where it matters ("unknown", an obfuscated RFC 7239 §6.3 name,
  junk) falls back to the peer, never to a guess, never to an exception.
- IPv6 is counted per /64 (RFC 6177: a site, often one host with privacy addresses, holds a
  whole /64 and can rotate through it freely); IPv4-mapped IPv6 is its IPv4 address.

Pure functions of strings: no Flask here (broker/http/context.py reads the request)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"  # RFC 7239
# How many entries from the right are ever looked at: real chains are a few proxies long, and
# the walk must stay cheap whatever length a caller sends.
MAX_HOPS = 16
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_NODE = 64  # longer than any address with a port and a zone id
_NODE_CHARS = re.compile(r"[0-9A-Za-z.:%\[\]_-]+")


@dataclass(frozen=True)
class ProxyTrust:
    """Which peers may say who the client is. Empty networks and hops 0: nobody."""

    networks: tuple[IPNetwork, ...] = ()
    hops: int = 0
    header: str = X_FORWARDED_FOR

    @property
    def enabled(self) -> bool:
        return bool(self.networks) or self.hops > 0

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def parse_node(text: str) -> IPAddress | None:
    """One address as proxies spell it: `198.51.100.7`, `198.51.100.7:4711`, `2001:db8::1`,
    `[2001:db8::1]`, `[2001:db8::1]:4711` (RFC 7239 §6 node), or None. IPv4-mapped IPv6
    becomes its IPv4 address and an IPv6 zone id is dropped."""
    if not text or len(text) > _MAX_NODE or not _NODE_CHARS.fullmatch(text):
        return None
    host, port = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two or more
        host, _, port = text.partition(":")
    if port and not (_PORT.fullmatch(port) and int(port) <= 65535):
        return None
    try:
        found = ip_address(host)
    except ValueError:
        return None
    if text.startswith("[") and found.version != 6:
        return None
    return _plain(found)


def _plain(address: IPAddress) -> IPAddress:
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return IPv6Address(int(address))
    return address


def limit_key(address: IPAddress) -> str:
    """The rate-limit bucket: the IPv4 address, or the IPv6 /64 it sits in."""
    address = _plain(address)
    if isinstance(address, IPv6Address):
        return str(IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _forwarded_for(element: str) -> IPAddress | None:
    """The `for` parameter of one RFC 7239 §4 forwarded-element (`for=…;proto=…;by=…`)."""
    found: IPAddress | None = None
    seen = False
    for pair in element.split(";"):
        name, eq, value = pair.partition("=")
        if not eq or name.strip().lower() != "for":
            continue
        if seen:
            return None  # two `for` in one element: which one?
        seen = True
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                return None
            value = re.sub(r"\\(.)", r"\1", value[1:-1])  # RFC 7230 quoted-pair
        found = parse_node(value)
    return found


def _entries_from_right(value: str, header: str, limit: int) -> list[IPAddress | None]:
    """At most `limit` entries, right-most first; None for one that is not an address.

    A plain split on commas: a quoted comma can only break an element that contains one,
    and the elements a trusted proxy appended (the right-most) contain none."""
    parts = value.rsplit(",", limit)[-limit:]
    parts.reverse()
    if header == FORWARDED:
        return [_forwarded_for(p) for p in parts]
    return [parse_node(p.strip()) for p in parts]


def resolve(peer: str, header_value: str | None, trust: ProxyTrust) -> IPAddress | None:
    """The client's address, or None when the peer itself is not an address."""
    peer_address = parse_node(peer)
    if peer_address is None or not trust.enabled or not header_value:
        return peer_address
    if trust.hops:
        entries = _entries_from_right(header_value, trust.header, trust.hops)
        # Fewer entries than proxies: this request did not come through all of them.
        if len(entries) < trust.hops:
            return peer_address
        return entries[trust.hops - 1] or peer_address
    if not trust.is_trusted(peer_address):
        return peer_address  # anyone else's headers are the caller's own words
    entries = _entries_from_right(header_value, trust.header, MAX_HOPS + 1)
    for entry in entries[:MAX_HOPS]:
        if entry is None:
            return peer_address
        if not trust.is_trusted(entry):
            return entry
    if len(entries) > MAX_HOPS:
        return peer_address  # a chain of trusted proxies longer than any real one
    # Every hop is one of ours: the client is inside, the left-most address is its own.
    return entries[-1] if entries else peer_address


def address_key(peer: str, header_value: str | None, trust: ProxyTrust) -> str:
    """What the per-address limit (and the audit event) records for this request."""
    found = resolve(peer, header_value, trust)
    return peer if found is None else limit_key(found)
