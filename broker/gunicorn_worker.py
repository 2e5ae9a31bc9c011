"""gunicorn's gthread worker, made safe against slow clients (config/gunicorn.conf.py uses it).

Stock workers read a request on the thread that will serve it: a sync worker, or a gthread
thread, blocks in recv() for as long as a client takes to trickle its headers, so a few
connections sending a byte now and then hold every worker (slowloris). Here the worker's
event loop reads each request *without a thread*, non-blocking, into a buffer, and hands it
to the thread pool only once it is complete; threads only ever run requests that are ready.

- A request must arrive whole within the read timeout (ERRAND_REQUEST_READ_TIMEOUT_SECONDS),
  counted from the connection's accept (or from the first byte of a kept-alive connection's
  next request); otherwise the connection is closed. Nothing is answered: the client has not
  finished asking (RFC 9110 §15.5.9 allows a 408; proxies and clients do not need it).
- An idle kept-alive connection is closed after the keep-alive period (gunicorn `keepalive`).
- What the thread may still read itself (a chunked body, `Expect: 100-continue`, an oversized
  request) goes through a reader bounded by the same deadline, so no thread waits longer.
- Closing never blocks the event loop: the write side is shut, the peer's last bytes are
  drained as they come, and the socket is closed at EOF or after a short linger (RFC 9112
  §9.6), where stock gthread lingers up to 2 s inside its loop, once per connection.

TLS is terminated in front of the broker (README); this worker reads plain HTTP/1.1 only and
refuses to start with gunicorn's own TLS or HTTP/2 configured."""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import re
import selectors
import socket
import time
from collections.abc import Iterator
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

from broker.settings import load_server_settings

# Larger than any request Errand accepts (a 64 KiB form plus headers): beyond this the parser
# and the app refuse it, reading what is left through the deadline-bounded reader.
MAX_BUFFERED_REQUEST = 96 * 1024
RECV_SIZE = 64 * 1024
CLOSE_LINGER_SECONDS = 1.0  # how long a closing connection may take to send its FIN

READING, IDLE, CLOSING = "reading", "idle", "closing"

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
_TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:", re.I | re.M)
_EXPECT = re.compile(rb"^expect[ \t]*:", re.I | re.M)


def bytes_needed(head: bytes) -> int | None:
    """How many bytes the request whose header block is `head` (blank line included) takes
    in all, so the parser never waits for the client; None when the thread must read the
    rest itself (chunked body, `Expect: 100-continue`, a length the parser will refuse),
    through the deadline-bounded reader."""
    if _TRANSFER_ENCODING.search(head) or _EXPECT.search(head):
        return None
    lengths = {m.group(1) for m in _CONTENT_LENGTH.finditer(head)}
    if not lengths:
        return len(head)  # no body
    if len(lengths) > 1:
        return None  # the parser answers 400
    (value,) = lengths
    if not value.isdigit() or len(value) > 9:
        return None
    wanted = len(head) + int(value)
    return wanted if wanted <= MAX_BUFFERED_REQUEST else None


# gunicorn's own cap on draining a body the application did not read (http/parser.py).
DRAIN_LIMIT = 64 * 1024


def _drainable(req: Any) -> bool:
    """Whether the body of `req`, if the application leaves it unread, can be drained so the
    connection serves another request: a known length under gunicorn's drain cap."""
    length = getattr(getattr(req.body, "reader", None), "length", None)
    return isinstance(length, int) and length < DRAIN_LIMIT


@contextlib.contextmanager
def _corked(sock: socket.socket) -> Iterator[None]:
    """Hold back partial segments while a response is written (Linux TCP_CORK): gunicorn
    writes the header block and the body separately, and with TCP_NODELAY (its default) each
    went out as a segment of its own: measured 4.0 TCP segments per keep-alive request and
    response, 2.2 corked, each one a trip through both ends' network stacks. Uncorking
    sends what is left at once. Where TCP_CORK does not exist this does nothing."""
    cork: int | None = getattr(socket, "TCP_CORK", None)
    corked = False
    if cork is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
            corked = True
    try:
        yield
    finally:
        if corked and cork is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


class _DeadlineReader:
    """What the request parser reads through on a thread: each recv() waits at most until
    the request's read deadline, so a trickling client cannot hold a thread past it."""

    __slots__ = ("deadline", "sock", "write_timeout")

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self.sock = sock
        self.write_timeout = write_timeout
        self.deadline = 0.0

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request read timeout")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(size)
        finally:
            self.sock.settimeout(self.write_timeout)


class ReadTimeoutWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no types
    """gthread with requests read on the event loop, under a deadline (see the module doc)."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl or "h1" not in cfg.http_protocols or len(cfg.http_protocols) != 1:
            raise RuntimeError(
                "broker.gunicorn_worker reads plain HTTP/1.1 only: terminate TLS and HTTP/2 "
                "in front of the broker"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        server = load_server_settings()
        self.read_timeout = server.request_read_timeout_seconds
        # Sending a response is bounded too: a client that stops reading is dropped.
        self.write_timeout = max(self.read_timeout, 1.0)
        self._timers: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    # -- timers: one heap, stale entries skipped ------------------------------------------
    def _expire_at(self, conn: Any, state: str, when: float) -> None:
        conn.errand_state = state
        conn.errand_timer = next(self._seq)
        heapq.heappush(self._timers, (when, conn.errand_timer, conn))

    def _next_expiry(self) -> float | None:
        while self._timers:
            when, seq, conn = self._timers[0]
            if getattr(conn, "errand_timer", None) == seq:
                return when
            heapq.heappop(self._timers)
        return None

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        when = self._next_expiry()
        if when is not None:
            timeout = max(0.0, min(timeout, when - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)

    def murder_pending(self) -> None:
        """Close what ran out of time: unfinished requests, idle kept-alive connections
        (all of them once the worker stops), lingering closes."""
        now = time.monotonic()
        while self._timers:
            when, seq, conn = self._timers[0]
            if getattr(conn, "errand_timer", None) != seq:
                heapq.heappop(self._timers)
                continue
            if when > now:
                break
            heapq.heappop(self._timers)
            self._drop(conn)
        if not self.alive:
            for _, seq, conn in list(self._timers):
                if getattr(conn, "errand_timer", None) == seq and conn.errand_state == IDLE:
                    self._drop(conn)

    # -- the event loop's side -------------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = self._new_conn(client, addr, listener.getsockname())
        self._start_reading(conn, b"")

    def _new_conn(self, client: socket.socket, addr: Any, server: Any) -> Any:
        conn = TConn(self.cfg, client, addr, server)  # sets the socket non-blocking
        conn.errand_buf = bytearray()
        conn.errand_scan = 0
        conn.errand_need = -1
        conn.errand_deadline = 0.0
        conn.errand_reader = None
        conn.errand_registered = False
        return conn

    def _register(self, conn: Any, callback: Any) -> None:
        if conn.errand_registered:
            self.poller.modify(conn.sock, selectors.EVENT_READ, callback)
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, callback)
            conn.errand_registered = True

    def _unregister(self, conn: Any) -> None:
        if conn.errand_registered:
            conn.errand_registered = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)

    def _start_reading(self, conn: Any, already: bytes) -> None:
        """A new request begins: the read deadline starts now."""
        conn.errand_buf = bytearray(already)
        conn.errand_scan = 0
        conn.errand_need = -1  # unknown until the header block is in
        conn.errand_deadline = time.monotonic() + self.read_timeout
        self._expire_at(conn, READING, conn.errand_deadline)
        if already and self._maybe_dispatch(conn):
            return
        self._register(conn, lambda _sock: self._on_readable(conn))

    def _on_idle_readable(self, conn: Any) -> None:
        self._start_reading(conn, b"")
        self._on_readable(conn)

    def _on_readable(self, conn: Any) -> None:
        if conn.errand_state != READING:
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)  # the client went away before finishing its request
            return
        conn.errand_buf += data
        self._maybe_dispatch(conn)

    def _maybe_dispatch(self, conn: Any) -> bool:
        buf = conn.errand_buf
        if conn.errand_need < 0:
            # RFC 9112 §2.2: empty lines before a request line are ignored.
            while buf[:1] in (b"\r", b"\n"):
                del buf[:1]
            # Only the new bytes are scanned (and the 3 before them, for a split "\r\n\r\n").
            found = _HEADER_END.search(buf, max(0, conn.errand_scan - 3))
            conn.errand_scan = len(buf)
            if found is None:
                if len(buf) < MAX_BUFFERED_REQUEST:
                    return False
                conn.errand_need = 0  # too large for us: the parser refuses it
            else:
                need = bytes_needed(bytes(buf[: found.end()]))
                conn.errand_need = 0 if need is None else need
        if len(buf) < conn.errand_need:
            return False
        self._unregister(conn)
        conn.errand_timer = None  # the request is whole: no more deadline on the loop
        conn.errand_state = None
        self.enqueue_req(conn)
        return True

    def finish_request(self, conn: Any, fs: Any) -> None:
        """Back on the event loop after a request: keep the connection for the next one, or
        close it without blocking the loop."""
        try:
            keep = bool(fs.result()) if not fs.cancelled() else False
            if not keep or conn.parser is None:
                self._close_softly(conn)
                return
            conn.sock.setblocking(False)
            leftover = conn.parser.unreader.take_buffered()  # a pipelined next request
            if leftover:
                self._start_reading(conn, leftover)
                return
            self._expire_at(conn, IDLE, time.monotonic() + self.cfg.keepalive)
            self._register(conn, lambda _sock: self._on_idle_readable(conn))
        except Exception:  # one broken connection must not stop the loop
            self._drop(conn)

    def _close_softly(self, conn: Any) -> None:
        """RFC 9112 §9.6: send FIN, read until the peer's, then close; on the loop, bounded."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        self._expire_at(conn, CLOSING, time.monotonic() + CLOSE_LINGER_SECONDS)
        self._register(conn, lambda _sock: self._on_closing_readable(conn))

    def _on_closing_readable(self, conn: Any) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)

    def _drop(self, conn: Any) -> None:
        if getattr(conn, "errand_closed", False):
            return
        conn.errand_closed = True
        conn.errand_timer = None
        self._unregister(conn)
        self.nr_conns -= 1
        conn.close()

    # -- the thread's side -----------------------------------------------------------------
    def handle(self, conn: Any) -> Any:
        """Serve the request the loop buffered. Runs on a pool thread."""
        req = None
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(self.write_timeout)
            conn.init()
            if conn.errand_reader is None:
                conn.errand_reader = _DeadlineReader(conn.sock, self.write_timeout)
                conn.parser.unreader.sock = conn.errand_reader
            conn.errand_reader.deadline = conn.errand_deadline
            unreader = conn.parser.unreader
            unreader.unread(unreader.take_buffered() + bytes(conn.errand_buf))
            conn.errand_buf = bytearray()
            req = next(conn.parser)
            if not req:
                return False
            if not _drainable(req):
                # gunicorn drains an unread body before the next request only up to its cap;
                # past it the connection is closed. Say so in this response's headers, or a
                # client that reuses the connection (after a 413, say) loses its next request.
                req.must_close = True
            with _corked(conn.sock):
                served = self.handle_request(req, conn)
            return self._keepalive_after(conn, served)
        except TimeoutError:
            self.log.debug("Request not read (or response not taken) in time: closing.")
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as e:
            self.handle_error(req, conn.sock, conn.client, e)
        return False
