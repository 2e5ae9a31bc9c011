"""Slow clients cannot hold the workers (docs/security-model.md, "Bounded cost").

Against the real gunicorn (config/gunicorn.conf.py) with a small request-read timeout:

- 50 connections trickle their request headers a byte every 0.5 s, reconnecting whenever the
  server closes them; meanwhile metadata, /healthz and a real exchange answer within 1 s each;
- a connection that does not deliver its whole request within the read timeout is closed,
  whether it stalls mid-headers, trickles forever, trickles its body, or sends nothing.

Every simulator loop is bounded by a byte count and a deadline."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.support.redis import RedisDbs
from tests.support.stack import LOCAL, Stack, mint, post_token

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 2.0  # seconds, small for the test (ERRAND_REQUEST_READ_TIMEOUT_SECONDS)
SLOW_CLIENTS = 50
TRICKLE_INTERVAL = 0.5  # seconds between two bytes of a slow client
BOUND = 1.0  # seconds: what each real request may take while the slow clients trickle
# The request a slow client never finishes: a real token request's headers.
SLOW_REQUEST = (
    b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 40\r\n"
    b"X-Padding: " + b"a" * 400 + b"\r\n\r\n"
)


@dataclass
class SlowStack(Stack):
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}


@pytest.fixture(scope="module")
def slow_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: Any
) -> Iterator[SlowStack]:
    url = redis_dbs.url("e2e-slow-clients")
    running = SlowStack(
        tmp_path_factory.mktemp("slow-clients"),
        url,
        dev_issuer.issuer,
        extra_env={"ERRAND_REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT)},
    ).start()
    try:
        # One exchange first, so the issuer's JWKS is cached before the clock starts.
        assert post_token(running, mint(dev_issuer)).status_code == 200
        yield running
    finally:
        running.stop()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(url).flushdb()


def _connect(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed (EOF or reset); never blocks."""
    try:
        sock.setblocking(False)
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(True)
    return data == b"" or data.startswith(b"HTTP/1.1 408")


class Trickler(threading.Thread):
    """One slow client: sends SLOW_REQUEST a byte every TRICKLE_INTERVAL s until `stop`, its
    deadline or the end of the request; reconnects when the server closes it."""

    def __init__(self, stack: Stack, stop: threading.Event, deadline: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.stop, self.deadline = stack, stop, deadline
        self.connections = 0
        self.closed_by_server = 0
        self.bytes_sent = 0

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                sock = _connect(self.stack)
            except OSError:
                self.stop.wait(TRICKLE_INTERVAL)
                continue
            self.connections += 1
            try:
                for i in range(len(SLOW_REQUEST)):  # bounded by the request's length
                    if self.stop.is_set() or time.monotonic() >= self.deadline:
                        return
                    try:
                        sock.sendall(SLOW_REQUEST[i : i + 1])
                    except OSError:
                        self.closed_by_server += 1
                        break
                    self.bytes_sent += 1
                    if self.stop.wait(TRICKLE_INTERVAL):
                        return
                    if _closed_by_server(sock):
                        self.closed_by_server += 1
                        break
            finally:
                sock.close()


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def test_fifty_slow_clients_do_not_stall_the_broker(slow_stack: SlowStack, dev_issuer) -> None:
    stop = threading.Event()
    # Long enough for every slow client to be cut off at least once and reconnect.
    duration = 3 * READ_TIMEOUT + 2
    tricklers = [
        Trickler(slow_stack, stop, time.monotonic() + duration) for _ in range(SLOW_CLIENTS)
    ]
    for t in tricklers:
        t.start()
    timings: dict[str, list[float]] = {"healthz": [], "metadata": [], "exchange": []}
    try:
        # Let every slow client connect and start trickling before measuring.
        stop.wait(1.5)
        assert sum(t.connections for t in tricklers) >= SLOW_CLIENTS
        end = time.monotonic() + duration - 2.5
        while time.monotonic() < end:  # bounded by time; one round per ~0.3 s
            took, resp = _timed(lambda: LOCAL.get(slow_stack.url + "/healthz", timeout=5))
            assert resp.status_code == 200
            timings["healthz"].append(took)
            took, resp = _timed(
                lambda: LOCAL.get(
                    slow_stack.url + "/.well-known/oauth-authorization-server", timeout=5
                )
            )
            assert resp.status_code == 200 and resp.json()["issuer"] == slow_stack.url
            timings["metadata"].append(took)
            token = mint(dev_issuer)
            took, resp = _timed(lambda token=token: post_token(slow_stack, token))
            assert resp.status_code == 200, resp.text
            timings["exchange"].append(took)
            stop.wait(0.3)
    finally:
        stop.set()
        for t in tricklers:
            t.join(5)
    slowest = {name: max(values) for name, values in timings.items()}
    print(f"slowest with {SLOW_CLIENTS} slow clients: {slowest}")
    assert all(len(v) >= 3 for v in timings.values()), timings
    assert all(took < BOUND for took in slowest.values()), slowest
    # The server cut the slow clients off (their requests never completed) ...
    assert sum(t.closed_by_server for t in tricklers) >= SLOW_CLIENTS
    # ... and none of them got further than the read timeout allows.
    most = max(t.bytes_sent for t in tricklers)
    assert most < len(SLOW_REQUEST)


def _seconds_until_closed(sock: socket.socket, limit: float, feed: bytes = b"") -> float:
    """Feed `feed` a byte every TRICKLE_INTERVAL s (nothing when empty) and return how long
    until the server closes the connection; `limit` if it never does."""
    t0 = time.monotonic()
    sock.settimeout(TRICKLE_INTERVAL)
    i = 0
    while time.monotonic() - t0 < limit:  # bounded by time
        if feed and i < len(feed):
            try:
                sock.sendall(feed[i : i + 1])
            except OSError:
                return time.monotonic() - t0
            i += 1
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
        if data == b"" or data.startswith(b"HTTP/1.1 408"):
            return time.monotonic() - t0
        pytest.fail(f"the server answered an unfinished request: {data[:100]!r}")
    return limit


@pytest.mark.parametrize(
    ("first", "feed"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b""),  # stalls mid-headers
        (b"G", SLOW_REQUEST[1:]),  # trickles its headers
        (b"", b""),  # says nothing at all
        (  # sends its headers at once, then trickles the body
            b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n",
            b"grant_type=" + b"x" * 189,
        ),
    ],
    ids=["stalled", "trickling", "silent", "slow-body"],
)
def test_an_unfinished_request_is_closed_within_the_read_timeout(
    slow_stack: SlowStack, first: bytes, feed: bytes
) -> None:
    with _connect(slow_stack) as sock:
        if first:
            sock.sendall(first)
        took = _seconds_until_closed(sock, limit=READ_TIMEOUT + 5, feed=feed)
    print(f"closed after {took:.2f} s (read timeout {READ_TIMEOUT} s)")
    # Closed by the read timeout, not before (a client that is merely slow but finishes in
    # time is served), with a little slack for the worker's loop and this machine.
    assert took <= READ_TIMEOUT + 1.5, f"still open after {took:.1f} s"
    assert took >= READ_TIMEOUT - 0.5, f"closed after {took:.1f} s, before the read timeout"


def test_kept_alive_connections_are_served_request_after_request(slow_stack: SlowStack) -> None:
    """The read timeout is per request, not per connection: a kept-alive connection that
    sends its next request promptly is served, also after more than the read timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", slow_stack.port, timeout=5)
    try:
        first_socket = None
        t0 = time.monotonic()
        for n in range(8):  # bounded: 8 requests, spread over more than READ_TIMEOUT
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
            if n == 0:
                first_socket = conn.sock
                assert first_socket is not None, "the server does not keep connections alive"
            assert conn.sock is first_socket, "the server closed a kept-alive connection"
            time.sleep(READ_TIMEOUT / 4)  # a client pausing between requests, bounded
        assert time.monotonic() - t0 > READ_TIMEOUT
    finally:
        conn.close()
