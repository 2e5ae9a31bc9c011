"""Bounded HTTP GETs: short timeouts, a size cap, no redirects (a redirect could carry our
client credentials elsewhere), one requests.Session per process (sessions must not cross a
fork: a gunicorn worker would share its parent's sockets)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit

import requests


class HttpError(Exception):
    """The GET failed; the message names no secret and no token."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; not a name that merely starts like one."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_broker_url(url: Any, what: str) -> str:
    """`url` if it is https, or plain http to a loopback address (a broker on this machine, as
    in development); else ValueError. The JWKS decides which tokens are genuine and the feed
    carries our client secret: neither may cross a network in clear text."""
    if not isinstance(url, str):
        raise ValueError(f"{what} must be an absolute https:// URL")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced [ in an IPv6 host
        raise ValueError(f"{what} must be an absolute https:// URL") from None
    if not host or parts.scheme not in ("https", "http"):
        raise ValueError(f"{what} must be an absolute https:// URL")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError(
            f"{what} must use https:// (plain http is accepted only for a loopback address)"
        )
    return url


class ProcessSession:
    """A requests.Session that is recreated in a forked child."""

    def __init__(self) -> None:
        self._pid = -1
        self._session: requests.Session | None = None

    def get(self) -> requests.Session:
        pid = os.getpid()
        session = self._session
        if session is None or self._pid != pid:
            session = requests.Session()
            session.trust_env = False  # no proxies or .netrc credentials picked up by surprise
            self._session, self._pid = session, pid
        return session


def bounded_get(
    session: requests.Session,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, Any]:
    """(body, response headers) of a 200 answer, or HttpError."""
    try:
        with session.get(
            url, params=params, headers=headers, timeout=timeout, stream=True, allow_redirects=False
        ) as resp:
            if resp.status_code != 200:
                raise HttpError(f"HTTP {resp.status_code}", status=resp.status_code)
            body = bytearray()
            for chunk in resp.iter_content(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise HttpError("response too large")
            return bytes(body), resp.headers
    except requests.RequestException as err:
        raise HttpError(type(err).__name__) from err
