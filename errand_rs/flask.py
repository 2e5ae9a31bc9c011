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
from errand_rs.errors import BearerError
from errand_rs.feed import RevocationFeed
from errand_rs.verifier import ErrandVerifier, normalize_scopes

F = TypeVar("F", bound=Callable[..., Any])


class ErrandAuth:
    def __init__(
        self,
        app: Flask | None = None,
        *,
        verifier: ErrandVerifier,
        feed: RevocationFeed | None,
        realm: str | None = None,
    ) -> None:
        self.verifier = verifier
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
                    token = authenticate(
                        self.verifier,
                        self.feed,
                        request.headers.get("Authorization"),
                        required,
                        context=f"{request.method} {request.path}",
                    )
                except BearerError as err:
                    return self.error_response(err)
                g.errand_token = token
                return view(*args, **kwargs)

            return cast(F, wrapped)

        return decorator

    def error_response(self, err: BearerError) -> Response:
        """RFC 6750 §3 response; override to change the body."""
        status, headers, body = err.response_parts(self.realm)
        return Response(body, status=status, headers=headers)
