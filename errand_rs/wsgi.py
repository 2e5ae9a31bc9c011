"""Plain WSGI middleware: every request (except `exempt_paths`) needs a valid bearer token.

    app = ErrandMiddleware(app, verifier, feed, required_scopes=["deploy:read"],
                           exempt_paths=["/healthz"])

The verified token is in `environ["errand.token"]`; a rejection is answered here with the
RFC 6750 status, `WWW-Authenticate` and a JSON body, and never reaches the app."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from errand_rs.bearer import authenticate
from errand_rs.errors import BearerError
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ErrandVerifier, normalize_scopes

ENVIRON_KEY = "errand.token"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ErrandMiddleware:
    def __init__(
        self,
        app: WsgiApp,
        verifier: ErrandVerifier,
        feed: RevocationFeed | None,
        *,
        required_scopes: Iterable[str] | str | None = (),
        exempt_paths: Iterable[str] = (),
        realm: str | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.feed = feed
        self.required_scopes = normalize_scopes(required_scopes)
        # Exact PATH_INFO matches only: a prefix rule is one `..` or `%2F` away from a bypass.
        self.exempt_paths = frozenset(exempt_paths)
        self.realm = realm
        if feed is not None:  # polling from now: readiness need not wait for a request
            feed.ensure_started()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ.pop(ENVIRON_KEY, None)
        if environ.get("PATH_INFO", "") in self.exempt_paths:
            return self.app(environ, start_response)
        try:
            token = authenticate(
                self.verifier,
                self.feed,
                environ.get("HTTP_AUTHORIZATION"),
                self.required_scopes,
                context=f"{environ.get('REQUEST_METHOD', '')} {environ.get('PATH_INFO', '')}",
            )
        except BearerError as err:
            status, headers, body = err.response_parts(self.realm)
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return [body]
        environ[ENVIRON_KEY] = token
        return self.app(environ, start_response)
