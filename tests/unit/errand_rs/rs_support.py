"""Test support for errand_rs: a fake broker on 127.0.0.1 (JWKS + /revocations), real tokens
minted with the broker's own code and keys generated at test time."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from broker.domain.models import Grant
from broker.tokens.keyring import SigningKey

_CURSOR = re.compile(r"0|[0-9]{1,20}-[0-9]{1,20}")  # broker/store/revocations.py

AUDIENCE = "https://orders.acme.example"
RS_CLIENT_ID = "orders-api"
RS_CLIENT_SECRET = "orders-secret-for-tests-0123456789"


class FakeBroker:
    """Serves /.well-known/jwks.json and /revocations like the broker (build exactly against
    the documented feed format). Switches: `jwks_down`, `feed_down`, `feed_override`."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.jwks_cache_control: str | None = None
        self.jwks_hits = 0
        self.jwks_down = False
        self.entries: list[dict[str, Any]] = []  # each with its stream "id"
        self._seq = 0
        self.epoch = 0
        self.feed_down = False
        self.feed_override: bytes | None = None  # raw body to answer instead
        self.feed_requests: list[dict[str, str]] = []
        self.feed_auth_ok = 0
        self.expected_auth = (
            "Basic " + base64.b64encode(f"{RS_CLIENT_ID}:{RS_CLIENT_SECRET}".encode()).decode()
        )
        self.other_paths: list[str] = []
        self.lock = threading.Lock()
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/jwks.json":
                    broker._jwks(self)
                elif url.path == "/revocations":
                    broker._revocations(self, {k: v[0] for k, v in parse_qs(url.query).items()})
                else:
                    broker.other_paths.append(url.path)
                    self.send_error(404)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def _jwks(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.jwks_hits += 1
            if self.jwks_down:
                self._send(handler, 503, b'{"error":"temporarily_unavailable"}')
                return
            headers = {"Cache-Control": self.jwks_cache_control} if self.jwks_cache_control else {}
            self._send(handler, 200, json.dumps(self.jwks).encode(), headers)

    def _revocations(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self.lock:
            self.feed_requests.append(query)
            if self.feed_down:
                self._send(handler, 503, b'{"error":"temporarily_unavailable"}')
                return
            if handler.headers.get("Authorization") != self.expected_auth:
                self._send(
                    handler, 401, b'{"error":"invalid_client"}', {"WWW-Authenticate": "Basic"}
                )
                return
            self.feed_auth_ok += 1
            if self.feed_override is not None:
                self._send(handler, 200, self.feed_override)
                return
            # Like broker/store/revocations.py: cursors are Redis stream ids ("0" to start),
            # anything else is 400; entries whose tokens have all expired are skipped, but
            # the cursor still moves past them.
            since = query.get("since", "0")
            limit_text = query.get("limit", "1000")
            if not _CURSOR.fullmatch(since) or not limit_text.isdigit():
                self._send(handler, 400, b'{"error":"invalid_request"}')
                return
            limit = int(limit_text)
            after = (0, -1) if since == "0" else _id_key(since)
            rows = [e for e in self.entries if _id_key(e["id"]) > after][: limit + 1]
            more = len(rows) > limit
            rows = rows[:limit]
            now = int(time.time())
            body = {
                "cursor": rows[-1]["id"] if rows else since,
                "epoch": self.epoch,
                "entries": [
                    {k: v for k, v in e.items() if k != "id"} for e in rows if e["exp"] >= now
                ],
                "more": more,
                "server_time": now,
            }
            self._send(handler, 200, json.dumps(body).encode())

    # -- test helpers -------------------------------------------------------------------------
    def publish(self, *keys: SigningKey) -> None:
        with self.lock:
            self.jwks = {"keys": [k.public_jwk() for k in keys]}

    def revoke(
        self, kind: str, value: str, *, not_after: int | None = None, exp: int | None = None
    ) -> str:
        """Append a feed entry as the broker does (XADD); returns its stream id."""
        now = int(time.time())
        exp = now + 900 if exp is None else exp
        if kind == "jti":  # the broker stores the grant's exp in both fields
            not_after = exp if not_after is None else not_after
        with self.lock:
            self._seq += 1
            entry_id = f"{int(time.time() * 1000)}-{self._seq}"
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

    def start(self) -> FakeBroker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def make_grant(**overrides: Any) -> Grant:
    now = int(time.time())
    grant = Grant(
        jti=secrets.token_hex(12),
        identity_id="acme-agent",
        identity_type="agent",
        owner="platform-team",
        task_id="task-" + secrets.token_hex(4),
        audiences=(AUDIENCE,),
        scopes=("orders:read", "orders:write"),
        iat=now,
        exp=now + 300,
        client_id="agent-client",
        issuer_id="gha",
        epoch=0,
    )
    return replace(grant, **overrides)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jws(
    header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes = b"sig"
) -> str:
    """A compact JWS from raw parts (for shapes PyJWT refuses to produce)."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{b64url(h.encode())}.{b64url(p.encode())}.{b64url(signature)}"
