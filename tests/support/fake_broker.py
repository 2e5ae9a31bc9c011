"""A fake Errand broker on 127.0.0.1, for the two clients of the real one:

- resource servers (errand_rs) read /.well-known/jwks.json and /revocations, built exactly
  against the documented feed format;
- the CI client (errand_client) posts to /token and /tasks/complete, and asks GitHub's token
  service (/oidc here) for its subject token.

Answers are scripted by the test; every request is recorded. No external service, no Redis."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from broker.domain.models import Grant
from broker.tokens.keyring import SigningKey
from tests.support.jws import segment

_CURSOR = re.compile(r"0|[0-9]{1,20}-[0-9]{1,20}")  # broker/store/revocations.py

# The resource server the fake broker issues tokens for, and its feed credentials.
RS_AUDIENCE = "https://orders.acme.example"
RS_CLIENT_ID = "orders-api"
RS_CLIENT_SECRET = "orders-secret-for-tests-0123456789"
# What the CI runner presents to GitHub's token service (ACTIONS_ID_TOKEN_REQUEST_TOKEN).
REQUEST_TOKEN = "runtime-request-token-0123456789"

Scripted = tuple[int, Any, dict[str, str]]


def fake_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped string with a made-up signature (the CI client never verifies it)."""
    header = {"alg": "ES256", "typ": "JWT"}
    return (
        f"{segment(json.dumps(header))}.{segment(json.dumps(claims))}.{secrets.token_urlsafe(16)}"
    )


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out on purpose leaves a broken pipe behind


class FakeBroker:
    """Serves the broker's endpoints from in-memory state the test switches.

    Resource-server side: `jwks` (or `publish()`), `jwks_down`, `jwks_cache_control`; the feed
    from `entries` (`revoke()` appends one), `epoch`, `feed_down`, `feed_override` (a raw body).
    Client side: push (status, body, headers) onto `token_script` / `complete_script` /
    `oidc_script` (statuses); an empty script answers success. `delay_seconds` holds each
    POST that long (a slow broker, for the client's own timeouts). Paths it does not serve
    are answered 404 and listed in `other_paths`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self._release = threading.Event()  # ends a delayed answer at teardown
        # resource-server side
        self.jwks: dict[str, Any] = {"keys": []}
        self.jwks_cache_control: str | None = None
        self.jwks_hits = 0
        self.jwks_down = False
        self.entries: list[dict[str, Any]] = []  # each with its stream "id"
        self._seq = 0
        self.epoch = 0
        self.feed_down = False
        self.feed_override: bytes | None = None
        self.feed_requests: list[dict[str, str]] = []
        self.feed_auth_ok = 0
        self.expected_auth = (
            "Basic " + base64.b64encode(f"{RS_CLIENT_ID}:{RS_CLIENT_SECRET}".encode()).decode()
        )
        # client side
        self.token_script: list[Scripted] = []
        self.complete_script: list[Scripted] = []
        self.token_requests: list[dict[str, list[str]]] = []
        self.complete_requests: list[str] = []  # the Authorization headers
        self.task_moves: list[tuple[str, str]] = []  # (path, Authorization) of /tasks/{id}/…
        self.oidc_requests: list[dict[str, Any]] = []
        self.oidc_script: list[int] = []  # statuses to answer before succeeding
        self.issued: list[str] = []
        self.expires_in = 300
        self.delay_seconds = 0.0
        self.other_paths: list[str] = []
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path == "/.well-known/jwks.json":
                    broker._jwks(self)
                elif url.path == "/revocations":
                    broker._revocations(self, {k: v[0] for k, v in query.items()})
                elif url.path == "/oidc":
                    broker._oidc(self, query)
                else:
                    broker._not_found(self, url.path)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if broker.delay_seconds:
                    broker._release.wait(broker.delay_seconds)
                if self.path == "/token":
                    broker._token(self, parse_qs(raw, keep_blank_values=True))
                elif self.path == "/tasks/complete":
                    broker._complete(self)
                elif self.path.startswith("/tasks/"):
                    broker._move(self)
                else:
                    broker._not_found(self, self.path)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- plumbing -------------------------------------------------------------------------------
    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        """bytes are sent as they are (text/html), anything else as JSON."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        ctype = "text/html" if isinstance(body, bytes) else "application/json"
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _not_found(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        with self.lock:
            self.other_paths.append(path)
        self._send(handler, 404, {"error": "not_found"})

    def start(self) -> FakeBroker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- resource-server side -------------------------------------------------------------------
    def _jwks(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.jwks_hits += 1
            if self.jwks_down:
                self._send(handler, 503, {"error": "temporarily_unavailable"})
                return
            headers = {"Cache-Control": self.jwks_cache_control} if self.jwks_cache_control else {}
            self._send(handler, 200, self.jwks, headers)

    def _revocations(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self.lock:
            self.feed_requests.append(query)
            if self.feed_down:
                self._send(handler, 503, {"error": "temporarily_unavailable"})
                return
            if handler.headers.get("Authorization") != self.expected_auth:
                self._send(handler, 401, {"error": "invalid_client"}, {"WWW-Authenticate": "Basic"})
                return
            self.feed_auth_ok += 1
            if self.feed_override is not None:
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(self.feed_override)))
                handler.end_headers()
                handler.wfile.write(self.feed_override)
                return
            # Like broker/store/revocations.py: cursors are Redis stream ids ("0" to start),
            # anything else is 400; entries whose tokens have all expired are skipped, but
            # the cursor still moves past them.
            since = query.get("since", "0")
            limit_text = query.get("limit", "1000")
            if not _CURSOR.fullmatch(since) or not limit_text.isdigit():
                self._send(handler, 400, {"error": "invalid_request"})
                return
            limit = int(limit_text)
            after = (0, -1) if since == "0" else _id_key(since)
            rows = [e for e in self.entries if _id_key(e["id"]) > after][: limit + 1]
            more = len(rows) > limit
            rows = rows[:limit]
            now = int(self.clock())
            body = {
                "cursor": rows[-1]["id"] if rows else since,
                "epoch": self.epoch,
                "entries": [
                    {k: v for k, v in e.items() if k != "id"} for e in rows if e["exp"] >= now
                ],
                "more": more,
                "server_time": now,
            }
            self._send(handler, 200, body)

    def publish(self, *keys: SigningKey) -> None:
        with self.lock:
            self.jwks = {"keys": [k.public_jwk() for k in keys]}

    def revoke(
        self, kind: str, value: str, *, not_after: int | None = None, exp: int | None = None
    ) -> str:
        """Append a feed entry as the broker does (XADD); returns its stream id."""
        now = int(self.clock())
        exp = now + 900 if exp is None else exp
        if kind == "jti":  # the broker stores the grant's exp in both fields
            not_after = exp if not_after is None else not_after
        with self.lock:
            self._seq += 1
            entry_id = f"{int(self.clock() * 1000)}-{self._seq}"
            self.entries.append(
                {
                    "id": entry_id,
                    "kind": kind,
                    "value": value,
                    "not_after": now if not_after is None else not_after,
                    "exp": exp,
                }
            )
        return entry_id

    @property
    def entry_ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    # -- client side ----------------------------------------------------------------------------
    def _oidc(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        with self.lock:
            self.oidc_requests.append(
                {"query": query, "authorization": handler.headers.get("Authorization")}
            )
            status = self.oidc_script.pop(0) if self.oidc_script else 200
        if handler.headers.get("Authorization") != f"bearer {REQUEST_TOKEN}":
            self._send(handler, 401, {"message": "bad request token"})
            return
        if status != 200:
            self._send(handler, status, {"message": "scripted"})
            return
        aud = query.get("audience", [""])[0]
        self._send(handler, 200, {"value": fake_jwt({"aud": aud, "jti": secrets.token_hex(8)})})

    def _token(self, handler: BaseHTTPRequestHandler, form: dict[str, list[str]]) -> None:
        with self.lock:
            self.token_requests.append(form)
            scripted = self.token_script.pop(0) if self.token_script else None
        if scripted is not None:
            self._send(handler, *scripted)
            return
        token = "eyJ.at-" + secrets.token_urlsafe(24)
        self.issued.append(token)
        self._send(
            handler,
            200,
            {
                "access_token": token,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "scope": (form.get("scope") or ["deploy:read"])[0],
                "task_id": (form.get("task_id") or ["task-generated"])[0],
            },
            {"Cache-Control": "no-store"},
        )

    def _complete(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.complete_requests.append(handler.headers.get("Authorization", ""))
            scripted = self.complete_script.pop(0) if self.complete_script else None
        if scripted is not None:
            self._send(handler, *scripted)
            return
        self._send(handler, 200, {"task_id": "t", "completed": True})

    def _move(self, handler: BaseHTTPRequestHandler) -> None:
        """POST /tasks/{id}/{action}: scripted by complete_script too."""
        with self.lock:
            self.task_moves.append((handler.path, handler.headers.get("Authorization", "")))
            scripted = self.complete_script.pop(0) if self.complete_script else None
        if scripted is not None:
            self._send(handler, *scripted)
            return
        task, action = handler.path.split("/")[2:4]
        state = {"fail": "failed", "cancel": "cancelled", "suspend": "suspended"}.get(action)
        body = {"task_id": task, "state": state or action, "previous": "running", "changed": True}
        self._send(handler, 200, body)

    def subject_tokens(self) -> list[str]:
        return [r["subject_token"][0] for r in self.token_requests]

    def unavailable(self, retry_after: str | None = "1") -> Scripted:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"error": "temporarily_unavailable", "error_description": "retry later"}
        return (503, body, headers)


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def make_grant(**overrides: Any) -> Grant:
    """A grant for RS_AUDIENCE, live for five minutes from now; keywords override fields."""
    now = int(time.time())
    grant = Grant(
        jti=secrets.token_hex(12),
        identity_id="acme-agent",
        identity_type="agent",
        owner="platform-team",
        task_id="task-" + secrets.token_hex(4),
        audiences=(RS_AUDIENCE,),
        scopes=("orders:read", "orders:write"),
        iat=now,
        exp=now + 300,
        client_id="agent-client",
        issuer_id="gha",
        epoch=0,
    )
    return replace(grant, **overrides)
