"""Servers on 127.0.0.1 whose behaviour tests switch: an OIDC issuer with JWKS faults, and a
listener that proves no egress. Every wait is bounded; teardown releases hangs."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

from broker.tokens.keyring import SigningKey
from tests.support.jws import new_es256_key


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class CountingListener(_Server):
    """Answers 404 to everything and records each request: proof that nothing called it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                listener.hits.append(f"{self.command} {self.path}")
                self.send_error(404)

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


JWKS_MODES = ("ok", "error", "hang", "slow", "garbage", "huge", "trickle", "empty")


class FaultIssuer(_Server):
    """An OIDC issuer on 127.0.0.1 serving discovery and a JWKS whose behaviour tests switch.

    Modes of /jwks: ok | error (HTTP 500) | hang (no answer for hang_seconds) | slow (answers
    after slow_seconds) | garbage (not JSON) | huge (valid JSON over 256 KiB) | trickle
    (headers at once, then one byte every trickle_interval) | empty ({"keys": []}).
    Counts every request on the server side."""

    def __init__(self, keys: list[SigningKey] | None = None) -> None:
        self.keys: list[SigningKey] = list(keys or [new_es256_key()])
        self.mode = "ok"
        self.hang_seconds = 5.0
        self.slow_seconds = 0.2
        self.trickle_interval = 0.2
        self.trickle_seconds = 6.0
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.jwks_times: list[float] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends hangs and trickles at teardown
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.paths.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    with issuer._lock:
                        issuer.discovery_requests += 1
                    doc = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                    self._send(200, json.dumps(doc).encode())
                elif self.path == "/jwks":
                    with issuer._lock:
                        issuer.jwks_requests += 1
                        issuer.jwks_times.append(time.monotonic())
                    issuer._serve_jwks(self)
                else:
                    self._send(404, b"{}")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def issuer(self) -> str:
        return self.url

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def _serve_jwks(self, h: Any) -> None:
        mode = self.mode
        body = json.dumps(self.jwks()).encode()
        if mode == "error":
            h._send(500, b'{"error":"boom"}')
        elif mode == "hang":
            self._release.wait(self.hang_seconds)
            h._send(200, body)
        elif mode == "slow":
            time.sleep(self.slow_seconds)
            h._send(200, body)
        elif mode == "garbage":
            h._send(200, b"{this is not json")
        elif mode == "empty":
            h._send(200, b'{"keys": []}')
        elif mode == "huge":
            doc = {**self.jwks(), "padding": "x" * (300 * 1024)}
            h._send(200, json.dumps(doc).encode())
        elif mode == "trickle":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            deadline = time.monotonic() + self.trickle_seconds
            with contextlib.suppress(OSError):
                for byte in body:
                    if time.monotonic() > deadline or self._release.is_set():
                        return
                    h.wfile.write(bytes([byte]))
                    h.wfile.flush()
                    time.sleep(self.trickle_interval)
        else:
            h._send(200, body)

    def mint(self, claims: dict[str, Any], *, key: SigningKey | None = None, **headers: Any) -> str:
        key = key or self.keys[0]
        hdr = {"kid": key.kid, "typ": "JWT", **headers}
        return jwt.encode(claims, key.private_key, algorithm="ES256", headers=hdr)

    def stop(self) -> None:
        self._release.set()
        super().stop()
