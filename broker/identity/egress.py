"""Where a key fetch may go: only where the configuration says, never where a document says.

An issuer's discovery document (or a compromised issuer) could point the key fetch at plain
http, another host, an internal service or the cloud metadata address. Before any request:

- a discovered `jwks_uri` must be https on the issuer's own origin (same scheme, host and
  port), or https on a host the issuer's `jwks_hosts` lists; never with user info, a query or
  a fragment (OpenID Connect Discovery 1.0 §3 only requires a URL; we ask for less);
- every URL fetched (discovery, a configured or discovered `jwks_uri`, an agent's `jwks_uri`)
  has its host resolved and *every* address checked: link-local (169.254.0.0/16, fe80::/10,
  the metadata services), multicast, unspecified and reserved addresses are always refused;
  loopback only when the issuer's own configured URL names a loopback host (development) or
  the issuer sets `allow_private_network`; other non-global addresses (RFC 1918, unique-local,
  CGNAT) only with `allow_private_network`.

The connection resolves the name again; a DNS answer that changes in between (rebinding) is
not covered here: the host is one the operator configured or the issuer's own origin."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from broker.domain.models import TrustedIssuer
from broker.identity.errors import KeysUnavailable

Resolver = Callable[[str, int], list[str]]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"https": 443, "http": 80}
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host" on Linux: reaches loopback
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or the name localhost: the only hosts a plain-http URL may name."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refused(url: str, why: str) -> KeysUnavailable:
    return KeysUnavailable("the issuer's keys are unavailable", debug=f"fetch refused: {why}")


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as err:
        raise _refused(url, "malformed URL") from err
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise _refused(url, "not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise _refused(url, "user info in the URL")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise _refused(url, "query or fragment in the URL")
    return parts


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    return (parts.scheme, (parts.hostname or "").lower(), port)


def check_discovered_jwks_uri(uri: str, issuer: TrustedIssuer) -> None:
    """A discovered jwks_uri: the issuer's origin, or https on a host it allow-lists."""
    parts = _split(uri)
    origin = _origin(parts)
    if origin == _origin(_split(issuer.issuer)):
        return
    if parts.scheme != "https":
        raise _refused(uri, "plain http jwks_uri on another origin")
    _, host, port = origin
    allowed = issuer.options.jwks_hosts
    if (host in allowed and port == 443) or f"{host}:{port}" in allowed:
        return
    raise _refused(uri, f"jwks_uri host {host}:{port} is neither the issuer's nor in jwks_hosts")


def _unwrap(addr: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 one embeds (mapped, 6to4, NAT64): it is where packets go."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
        if any(addr in net for net in _NAT64):
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def address_refusal(addr: IpAddress, *, loopback_ok: bool, private_ok: bool) -> str | None:
    """Why a key fetch may not connect to addr, or None when it may."""
    addr = _unwrap(addr)
    if addr.is_loopback:
        return None if loopback_ok or private_ok else "loopback address"
    if (
        addr.is_link_local
        or addr.is_multicast
        or addr.is_unspecified
        or addr.is_reserved
        or (isinstance(addr, ipaddress.IPv4Address) and addr in _THIS_NETWORK)
    ):
        return "link-local, multicast, unspecified or reserved address"
    if not addr.is_global:
        return None if private_ok else "private address"
    return None


def _configured_loopback(issuer: TrustedIssuer) -> bool:
    """The operator named a loopback host for this issuer (a development setup)."""
    for url in (issuer.issuer, issuer.jwks_uri):
        if url and "://" in url and is_loopback_host(urlsplit(url).hostname):
            return True
    return False


def check_destination(url: str, issuer: TrustedIssuer, resolve: Resolver) -> None:
    """Refuse, before any connection, a URL whose host is or resolves to a refused address."""
    parts = _split(url)
    _, host, port = _origin(parts)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a) for a in resolve(host, port)]
        except (OSError, UnicodeError, ValueError) as err:
            raise KeysUnavailable(
                "the issuer's keys are unavailable", debug=f"cannot resolve {host}"
            ) from err
    if not addresses:
        raise KeysUnavailable("the issuer's keys are unavailable", debug=f"cannot resolve {host}")
    loopback_ok = _configured_loopback(issuer)
    private_ok = issuer.options.allow_private_network
    for addr in addresses:
        why = address_refusal(addr, loopback_ok=loopback_ok, private_ok=private_ok)
        if why is not None:
            raise _refused(url, f"{host} is a {why} ({addr})")
