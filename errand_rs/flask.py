"""Flask extension: `@auth.require(scopes=[...])` puts the verified token on `g.errand_token`.

    auth = ErrandAuth(app, verifier=verifier, feed=feed)

    @app.get("/deployments")
    @auth.require(scopes=["deploy:read"])
    def deployments():
        return {"task": g.errand_token.task_id}

`feed` must be passed: a RevocationFeed, or None for offline verification only (weaker: a
revoked token is then accepted until it expires)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from flask import Flask, Response, g, request

from errand_rs.bearer import authenticate
from errand_rs.dpop import DpopChecker, authenticate_dpop
from errand_rs.errors import BearerError
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ErrandVerifier, VerifiedToken, normalize_scopes

F = TypeVar("F", bound=Callable[..., Any])


class ErrandAuth:
    def __init__(
        self,
        app: Flask | None = None,
        *,
        verifier: ErrandVerifier,
        feed: RevocationFeed | None,
        realm: str | None = None,
        dpop: DpopChecker | None = None,
    ) -> None:
        self.verifier = verifier
        self.dpop = dpop  # DPoP-bound tokens too (errand_rs.dpop); None: Bearer only
        self.feed = feed
        self.realm = realm
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register with the app and start the feed's polling now, so a readiness check
        (`feed.status()`) can turn healthy before the first protected request."""
        app.extensions["errand_rs"] = self
        if self.feed is not None:
            self.feed.ensure_started()

    def require(self, scopes: Iterable[str] | str | Callable[..., Any] | None = ()) -> Any:
        """Decorator; usable as `@auth.require` or `@auth.require(scopes=[...])`."""
        if callable(scopes):
            return self.require(())(scopes)
        required = normalize_scopes(scopes)

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                try:
                    token = self._authenticate(required)
                except BearerError as err:
                    return self.error_response(err)
                g.errand_token = token
                return view(*args, **kwargs)

            return cast(F, wrapped)

        return decorator

    def _authenticate(self, required: tuple[str, ...]) -> VerifiedToken:
        context = f"{request.method} {request.path}"
        if self.dpop is None:
            return authenticate(
                self.verifier,
                self.feed,
                request.headers.get("Authorization"),
                required,
                context=context,
            )
        length = request.content_length or 0
        body = request.get_data(cache=True) if length <= self.dpop.max_body_bytes else None
        return authenticate_dpop(
            self.verifier,
            self.feed,
            self.dpop,
            authorization=request.headers.get("Authorization"),
            proofs=request.headers.getlist("DPoP"),
            method=request.method,
            url=self.dpop.request_url(request.script_root + request.path, request.base_url),
            body=body,
            content_digest_header=request.headers.get("Content-Digest"),
            required_scopes=required,
            context=context,
        )

    def error_response(self, err: BearerError) -> Response:
        """RFC 6750 §3 response; override to change the body."""
        status, headers, body = err.response_parts(self.realm)
        return Response(body, status=status, headers=headers)
