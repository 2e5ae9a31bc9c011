"""Fetching an issuer's JWKS: over HTTP (via OIDC discovery if needed) or from a file.

One deadline (`fetch_timeout_seconds`) bounds the whole fetch, discovery included, so other
workers know how long a fetch in flight can take (broker/identity/jwks.py waits no longer).
Every URL passes broker/identity/egress.py before any connection."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import requests

from broker.domain.models import TrustedIssuer
from broker.identity.egress import Resolver, check_destination, check_discovered_jwks_uri
from broker.identity.egress import resolve_host as system_resolve
from broker.identity.errors import KeysUnavailable

MAX_JWKS_BYTES = 256 * 1024

Getter = Callable[[str, float], bytes]  # (url, seconds left) -> body


class JwksFetcher(Protocol):
    def fetch(self, issuer: TrustedIssuer) -> dict[str, Any]: ...


def _unavailable(debug: str) -> KeysUnavailable:
    return KeysUnavailable("the issuer's keys are unavailable", debug=debug)


def bounded_get(url: str, timeout: float) -> bytes:
    """GET with a size cap and a deadline for the whole fetch, headers included: requests'
    timeout bounds each socket read only, so an endpoint trickling a byte at a time could
    otherwise hold a worker (and the JWKS lock) for hours. The fetch runs in a daemon thread;
    past the deadline we stop waiting for it, and its own read timeouts end it later."""
    deadline = time.monotonic() + timeout
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            with requests.get(url, timeout=timeout, stream=True, allow_redirects=False) as resp:
                outcome["body"] = _read_bounded(resp, url, deadline)
        except BaseException as err:  # handed to the waiting thread
            outcome["error"] = err

    worker = threading.Thread(target=fetch, name="errand-jwks-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _unavailable(f"{url}: fetch deadline passed")
    if "error" in outcome:
        raise outcome["error"]
    return bytes(outcome["body"])


def _read_bounded(resp: requests.Response, url: str, deadline: float) -> bytes:
    if resp.status_code != 200:
        raise _unavailable(f"GET {url}: HTTP {resp.status_code}")
    body = b""
    for chunk in resp.iter_content(16384):
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise _unavailable(f"{url}: too large")
        if time.monotonic() > deadline:
            raise _unavailable(f"{url}: fetch deadline passed")
    if time.monotonic() > deadline:  # the watchdog may have cut the body short
        raise _unavailable(f"{url}: deadline")
    return body


class HttpJwksFetcher:
    """Fetch a JWKS over HTTP with one deadline and a size cap, via discovery if needed.

    `get` and `resolve` are the network seams (tests pass fakes that record every call)."""

    def __init__(self, *, get: Getter | None = None, resolve: Resolver | None = None) -> None:
        self._get = get or bounded_get
        self._resolve = resolve or system_resolve

    def fetch(self, issuer: TrustedIssuer) -> dict[str, Any]:
        deadline = time.monotonic() + issuer.fetch_timeout_seconds
        try:
            jwks_uri = issuer.jwks_uri or self._discover(issuer, deadline)
            doc = json.loads(self._checked_get(jwks_uri, issuer, deadline))
        except KeysUnavailable:
            raise
        except (requests.RequestException, ValueError) as err:
            raise _unavailable(f"{issuer.id}: {type(err).__name__}") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise _unavailable("JWKS has no keys list")
        return doc

    def _checked_get(self, url: str, issuer: TrustedIssuer, deadline: float) -> bytes:
        check_destination(url, issuer, self._resolve)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _unavailable(f"{url}: fetch deadline passed")
        return self._get(url, left)

    def _discover(self, issuer: TrustedIssuer, deadline: float) -> str:
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = json.loads(self._checked_get(url, issuer, deadline))
        if not isinstance(meta, dict) or meta.get("issuer") != issuer.issuer:
            raise _unavailable("discovery issuer does not match")
        uri = meta.get("jwks_uri")
        if not isinstance(uri, str):
            raise _unavailable("bad jwks_uri")
        check_discovered_jwks_uri(uri, issuer)
        return uri


def read_jwks_file(issuer: TrustedIssuer) -> dict[str, Any]:
    """A JWKS (or SPIFFE trust bundle) from a configured file, size-capped like a fetch."""
    assert issuer.jwks_file is not None
    try:
        with open(issuer.jwks_file, "rb") as fh:
            raw = fh.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise _unavailable(f"{issuer.id}: bundle too large")
        doc = json.loads(raw)
    except OSError as err:
        raise _unavailable(f"{issuer.id}: cannot read bundle: {err.strerror}") from err
    except ValueError as err:
        raise _unavailable(f"{issuer.id}: bundle is not JSON") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise _unavailable("JWKS has no keys list")
    return doc
