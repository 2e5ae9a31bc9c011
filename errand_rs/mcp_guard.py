"""McpGuard: an MCP server as an Errand resource server, independent of any web framework.

The ASGI middleware (errand_rs/asgi.py) and the WSGI one (errand_rs/mcp_wsgi.py) hand it the
request's method, path, headers and body; it answers with a response to send (`Answer`) or
lets the request through with its verified token (`Admitted`).

Order, for a POST to the MCP endpoint:

1. read the call: strict JSON-RPC, routing headers checked against the body
   (errand_rs/mcp.py); a refusal is kept, not yet sent, so that
2. a request without an acceptable token is always 401 first, whatever its body: a caller
   with no token learns nothing but where the metadata is. The challenge names
   `resource_metadata` and, when the call is known, every scope it needs;
3. the token is Errand's, unexpired, not revoked, and addressed to this server ALONE (a
   token that names another audience too could be replayed there: refused);
4. the kept refusal, if any: 400 with a JSON-RPC error (a header/body mismatch is MCP's
   -32020), and an operation the scope map does not open;
5. the scopes: 403 `insufficient_scope` naming every scope the call needs, in one
   challenge, so a client asks once for what it lacks.

Other methods on the endpoint (GET for a server stream, DELETE to end a session) need a
valid token and no scope. The metadata (errand_rs/protected_resource.py) is public.

DPoP (RFC 9449, `dpop=DpopChecker(...)`): `Authorization: DPoP <token>` goes through
errand_rs/dpop.py with this request's method, this server's configured URL for `htu`
(`checker.public_url` or the resource's origin, never the Host header), and the exact body
for the MCP DPoP profile's `content_digest`, so a proof signed for one JSON-RPC body does not
carry another. Every challenge then uses the DPoP scheme (plus a Bearer one unless
`require_dpop`), each still naming `resource_metadata` and every scope the call needs.
Without a checker a DPoP-bound token is refused (errand_rs.bearer: fail closed)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from errand_rs.bearer import authenticate
from errand_rs.dpop import DpopChallenge, DpopChecker, authenticate_dpop
from errand_rs.errors import BearerError, InsufficientScope, InvalidToken
from errand_rs.feed import RevocationFeed
from errand_rs.mcp import McpCall, McpRefused, McpScopes, read_call
from errand_rs.protected_resource import ProtectedResource
from errand_rs.verifier import ErrandVerifier, VerifiedToken

log = logging.getLogger("errand_rs")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Answer:
    """A response the guard sends itself; the MCP server never sees the request."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class Admitted:
    token: VerifiedToken
    call: McpCall | None  # None: not a POST to the MCP endpoint
    scopes: tuple[str, ...]  # what the call needed


def _json(status: int, doc: object, headers: Headers | None = None) -> Answer:
    body = json.dumps(doc).encode()
    return Answer(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *(headers or []),
        ],
        body,
    )


class McpGuard:
    """Authorize MCP requests for one MCP server (one resource identifier)."""

    def __init__(
        self,
        verifier: ErrandVerifier,
        feed: RevocationFeed | None,
        *,
        resource: ProtectedResource,
        scopes: McpScopes,
        endpoint_path: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        dpop: DpopChecker | None = None,
    ) -> None:
        if verifier.audience != resource.resource:
            # The audience a token must carry IS the resource identifier (RFC 8707): one
            # string, so the metadata can never advertise a server the verifier does not take.
            raise ValueError("verifier.audience must equal resource.resource")
        if resource.authorization_servers != (verifier.issuer,):
            raise ValueError("resource.authorization_servers must be (verifier.issuer,)")
        self.verifier = verifier
        self.feed = feed
        self.resource = resource
        self.scopes = scopes
        self.endpoint_path = endpoint_path or _path_of(resource.resource)
        self.max_body_bytes = max_body_bytes
        self.dpop = dpop
        doc = resource.metadata()
        if dpop is not None:
            # RFC 9728 §2: what a client needs to know before it asks for a token.
            doc.setdefault("dpop_signing_alg_values_supported", list(dpop.algorithms))
            if dpop.require_dpop:
                doc.setdefault("dpop_bound_access_tokens_required", True)
        self._metadata = json.dumps(doc).encode()
        if feed is not None:
            feed.ensure_started()

    def __repr__(self) -> str:
        return f"McpGuard(resource={self.resource.resource!r})"

    def metadata_answer(self, method: str, path: str) -> Answer | None:
        """The RFC 9728 metadata document, if the request asks for it."""
        if path not in self.resource.metadata_paths or method not in ("GET", "HEAD"):
            return None
        return Answer(
            200,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(self._metadata))),
                ("Cache-Control", "public, max-age=300"),
            ],
            self._metadata,
        )

    def too_large(self) -> Answer:
        return _json(413, {"error": "invalid_request", "error_description": "body too large"})

    def check(
        self, method: str, path: str, headers: Mapping[str, list[str]], body: bytes
    ) -> Admitted | Answer:
        """Admit the request or answer it. `headers` maps lowercase names to all values."""
        call: McpCall | None = None
        refusal: McpRefused | None = None
        needed: tuple[str, ...] = ()
        if method == "POST" and path == self.endpoint_path:
            try:
                call = read_call(headers, body)
                needed = self.scopes.required(call)
            except McpRefused as err:
                refusal = err
        try:
            token = self.authenticate(method, path, headers, body)
            if token.audiences != (self.resource.resource,):
                # Addressed to us and someone else: usable at a peer, so not ours alone.
                raise InvalidToken(
                    "The access token is not for this audience only.", reason="shared_aud"
                )
            if refusal is None and not token.has_scopes(needed):
                raise InsufficientScope(needed)  # every scope the call needs, not the missing
        except BearerError as err:
            if err.reason in ("insufficient_scope", "shared_aud"):
                # authenticate() logged the other refusals; these two are decided here.
                log.info(
                    "errand_rs: MCP request refused",
                    extra={
                        "errand_reason": err.reason,
                        "errand_context": f"{method} {path}",
                        "errand_mcp_call": f"{call.method} {call.name}" if call else None,
                    },
                )
            if self.dpop is not None and not isinstance(err, DpopChallenge):
                err = self.dpop.challenge(err)  # RFC 9449 §7.1: the DPoP scheme's challenge
            status, out_headers, out_body = err.response_parts(
                None, self.resource.challenge_params(needed)
            )
            return Answer(status, out_headers, out_body)
        if refusal is not None:
            return _json(400, refusal.body())
        return Admitted(token, call, needed)

    def authenticate(
        self, method: str, path: str, headers: Mapping[str, list[str]], body: bytes
    ) -> VerifiedToken:
        """The request's verified token, or a BearerError: the one place a sender-constrained
        scheme plugs in. A DPoP-bound token (RFC 9449) needs the method, this server's URL for
        `htu` and the body for the MCP DPoP profile's `content_digest`, all at hand here."""
        authorization = headers.get("authorization", [])
        if len(authorization) > 1:
            raise InvalidToken("Send one Authorization header.", reason="repeated_header")
        if self.dpop is not None:
            digest = headers.get("content-digest", [])
            return authenticate_dpop(
                self.verifier,
                self.feed,
                self.dpop,
                authorization=authorization[0] if authorization else None,
                # A WSGI server folds repeated headers into one comma-joined value: split,
                # so two proofs are two (refused) either way.
                proofs=[
                    x.strip() for v in headers.get("dpop", []) for x in v.split(",") if x.strip()
                ],
                method=method,
                url=self.dpop.request_url(path, self.resource.origin + path),
                body=body,
                content_digest_header=",".join(digest) if digest else None,
                context=f"{method} {path}",
            )
        return authenticate(
            self.verifier,
            self.feed,
            authorization[0] if authorization else None,
            context=f"{method} {path}",
        )


def _path_of(resource: str) -> str:
    return urlsplit(resource).path or "/"
