"""Bounded HTTP GETs: short timeouts, a size cap, no redirects (a redirect could carry our
client credentials elsewhere), one requests.Session per process (sessions must not cross a
fork: a gunicorn worker would share its parent's sockets)."""

from __future__ import annotations

import os
from typing import Any

import requests


class HttpError(Exception):
    """The GET failed; the message names no secret and no token."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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
