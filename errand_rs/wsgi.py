"""Plain WSGI middleware: every request (except `exempt_paths`) needs a valid bearer token.

    app = ErrandMiddleware(app, verifier, feed, required_scopes=["deploy:read"],
                           exempt_paths=["/healthz"])

The verified token is in `environ["errand.token"]`; a rejection is answered here with the
RFC 6750 status, `WWW-Authenticate` and a JSON body, and never reaches the app."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote
from wsgiref.util import request_uri

from errand_rs.bearer import authenticate
from errand_rs.dpop import DpopChecker, authenticate_dpop
from errand_rs.errors import BearerError
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ErrandVerifier, VerifiedToken, normalize_scopes

ENVIRON_KEY = "errand.token"


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, put back for the app to read; None if it is over `limit` (the
    proof's content_digest cannot then be checked). Without a Content-Length: no body."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return b""
    if length > limit:
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return bytes(body)


def dpop_authenticate_environ(
    environ: dict[str, Any],
    verifier: ErrandVerifier,
    feed: RevocationFeed | None,
    checker: DpopChecker,
    required_scopes: Iterable[str] | str | None,
    context: str,
) -> VerifiedToken:
    """errand_rs.dpop.authenticate_dpop for a WSGI request: its method, its URL without the
    query (or `checker.public_url` + path), its DPoP headers and its body."""
    authorization = environ.get("HTTP_AUTHORIZATION")
    uses_dpop = (authorization or "").strip()[:5].lower() == "dpop "
    body = _read_body(environ, checker.max_body_bytes) if uses_dpop else b""
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    proofs = [p.strip() for p in environ.get("HTTP_DPOP", "").split(",") if p.strip()]
    return authenticate_dpop(
        verifier,
        feed,
        checker,
        authorization=authorization,
        proofs=proofs,
        method=environ.get("REQUEST_METHOD", ""),
        url=checker.request_url(path, request_uri(environ, include_query=False)),
        body=body,
        content_digest_header=environ.get("HTTP_CONTENT_DIGEST"),
        required_scopes=required_scopes,
        context=context,
    )


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
        dpop: DpopChecker | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.feed = feed
        self.required_scopes = normalize_scopes(required_scopes)
        # Exact PATH_INFO matches only: a prefix rule is one `..` or `%2F` away from a bypass.
        self.exempt_paths = frozenset(exempt_paths)
        self.realm = realm
        self.dpop = dpop  # DPoP-bound tokens too (errand_rs.dpop); None: Bearer only
        if feed is not None:  # polling from now: readiness need not wait for a request
            feed.ensure_started()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ.pop(ENVIRON_KEY, None)
        if environ.get("PATH_INFO", "") in self.exempt_paths:
            return self.app(environ, start_response)
        context = f"{environ.get('REQUEST_METHOD', '')} {environ.get('PATH_INFO', '')}"
        try:
            if self.dpop is not None:
                token = dpop_authenticate_environ(
                    environ, self.verifier, self.feed, self.dpop, self.required_scopes, context
                )
            else:
                token = authenticate(
                    self.verifier,
                    self.feed,
                    environ.get("HTTP_AUTHORIZATION"),
                    self.required_scopes,
                    context=context,
                )
        except BearerError as err:
            status, headers, body = err.response_parts(self.realm)
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return [body]
        environ[ENVIRON_KEY] = token
        return self.app(environ, start_response)
