"""Tools for the hardening suites: raw JWS building, an issuer whose faults we switch, a
listener that proves no egress, a Redis that survives SIGKILL, and a Stack with extra
environment. Loopback only; every wait is bounded."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from broker.embedded_redis import RedisProcess
from broker.tokens.keyring import SigningKey, thumbprint
from tests.e2e.stack import Stack
from tests.fixtures.builders import NO_LIMITS as BUILDER_NO_LIMITS

# -- raw JWS ---------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """bytes as they are, str as UTF-8, anything else as compact JSON."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode("utf-8"))
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def es256(key: SigningKey, header: Any, payload: Any) -> str:
    """Sign arbitrary header/payload bytes with ES256, bypassing PyJWT's own checks."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64url(sig)}"


def hs256(secret: bytes, header: Any, payload: Any) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def new_key() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg="ES256", private_key=private)


def public_pem(key: SigningKey) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def unverified_claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def secret_fragments(token: str) -> list[str]:
    """The token and each long segment of it: none may appear in audit, logs or bodies."""
    return [token, *[p for p in token.split(".") if len(p) > 16]]


def assert_no_leak(token: str, texts: list[str]) -> None:
    for text in texts:
        for fragment in secret_fragments(token):
            assert fragment not in text, "a token (or a segment of one) leaked"


# -- servers on 127.0.0.1 --------------------------------------------------------------------


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
        self.keys: list[SigningKey] = list(keys or [new_key()])
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


# -- Redis that keeps acknowledged writes across SIGKILL -------------------------------------


class DurableRedis(RedisProcess):
    """RedisProcess with `appendonly yes` and `appendfsync always`: every acknowledged write
    survives a SIGKILL, so "the grant was written before the 200" can be checked afterwards."""

    persistence_args = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


# -- abuse limits --------------------------------------------------------------------------

# Every limit off (0), for suites that are not about limits: they send hundreds of requests
# from one address and identity on purpose.
NO_LIMITS = BUILDER_NO_LIMITS


def limits_supported() -> bool:
    """Does this broker's configuration know `broker.limits` (issue 5's abuse limits)?"""
    try:
        from broker.config import BrokerSchema
    except ImportError:
        return False
    return "limits" in BrokerSchema().fields


def set_limits(broker: dict[str, Any], limits: dict[str, Any] | None = None) -> None:
    """Write `limits` (default: all off) into a raw `broker:` section, if the broker has them."""
    if limits_supported():
        broker["limits"] = {
            **(broker.get("limits") or {}),
            **(NO_LIMITS if limits is None else limits),
        }


# -- a Stack with extra environment and a tuned configuration --------------------------------


@dataclass
class TunedStack(Stack):
    """tests/e2e/stack.Stack, plus extra environment and a hook to edit its YAML before start."""

    extra_env: dict[str, str] = field(default_factory=dict)
    limits: dict[str, Any] | None = None  # None: every abuse limit off

    def __post_init__(self) -> None:
        super().__post_init__()
        self.edit_config(lambda doc: set_limits(doc["broker"], self.limits))

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        return env

    def edit_config(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        doc = yaml.safe_load(self.config_file.read_text())
        mutate(doc)
        self.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def restart_worker(self) -> None:
        import sys

        self._spawn("worker", [sys.executable, "-m", "workers"])

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (the RQ work horse included)."""
        import os
        import signal

        proc = self.procs["worker"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def warm_up(stack: Stack, issuer: FaultIssuer, timeout: float = 10.0) -> None:
    """One sequential exchange, so the issuer's JWKS is fetched and mirrored in Redis before a
    test sends concurrent requests (see test_cold_fleet_shares_the_first_fetch)."""
    import requests

    from broker.devissuer import github_claims
    from tests.e2e.stack import AUDIENCE, exchange_form

    http = requests.Session()
    http.trust_env = False
    deadline = time.monotonic() + timeout
    while True:
        claims = github_claims(issuer=issuer.issuer, audience=AUDIENCE, now=time.time())
        resp = http.post(stack.url + "/token", data=exchange_form(issuer.mint(claims)), timeout=10)
        if resp.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up exchange failed: {resp.status_code} {resp.text}")
        time.sleep(0.2)


@contextlib.contextmanager
def running(stack: TunedStack) -> Iterator[TunedStack]:
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
