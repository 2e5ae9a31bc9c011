"""The broker's revocation feed: what offline verification cannot know.

`GET {issuer}/revocations?since=<cursor>&limit=<n>` (client_secret_basic) answers

    {"cursor": "<opaque>", "epoch": <int>, "more": <bool>, "server_time": <int>,
     "entries": [{"kind": "jti"|"task"|"identity"|"owner"|"identity_type"
                          |"task_suspended"|"task_resumed",
                  "value": "<string>", "not_after": <int>, "exp": <int>}, ...]}

A background thread polls every `poll_interval_seconds` and follows `more` at once. A token
is revoked when its `epoch` is below the feed's epoch (revoke-all is a cut), its `jti` is
listed, or its task / subject / owner / identity type is listed with `iat <= not_after`;
it is held (refused) while its task is suspended: a `task_suspended` entry not followed by a
`task_resumed` one for the task (entries apply in feed order; a resumed task's tokens are
good again).
`not_after` and `iat` both come from the broker's clock, so node clocks need not agree.

Fail closed: with no successful sync for `feed_grace_seconds`, `check()` raises
FeedUnavailable for every token until the feed recovers. A page the client does not fully
understand (an unknown entry kind, a malformed field) is a failed sync, never a partial one
that silently ignores a revocation.

Entries are kept until every token they cover has expired by *our* clock, with the largest
leeway a verifier may use (`exp + 60`): the verifier accepts a token until `exp + leeway` on
the local clock, so forgetting an entry by the broker's clock could let a revoked token back
in on a node whose clock runs behind.

Kept in one module: the page format and the one class that applies it are read together
to check that every failure closes."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import quote

from errand_jose import JoseError, strict_json_object
from errand_rs._http import HttpError, ProcessSession, bounded_get, check_broker_url
from errand_rs.errors import FeedUnavailable, InvalidToken, TokenRevoked
from errand_rs.verifier import MAX_LEEWAY_SECONDS, VerifiedToken

log = logging.getLogger("errand_rs.feed")

# kind -> the claim it matches
CUTOFF_KINDS: dict[str, str] = {
    "task": "task_id",
    "identity": "sub",
    "owner": "owner",
    "identity_type": "identity_type",
}
# A task's suspension holds its tokens (issued before it) until a resume entry lifts it.
SUSPENSION_KINDS = ("task_suspended", "task_resumed")
KINDS = ("jti", *CUTOFF_KINDS, *SUSPENSION_KINDS)
MAX_PAGE_BYTES = 8 * 1024 * 1024
MAX_PAGES_PER_SYNC = 1000
MAX_CURSOR_LENGTH = 512
MAX_VALUE_LENGTH = 256
RETAIN_AFTER_EXP_SECONDS = MAX_LEEWAY_SECONDS


class FeedError(Exception):
    """One sync failed; the message names no secret."""


@dataclass(frozen=True)
class FeedEntry:
    kind: str
    value: str
    not_after: int
    exp: int


@dataclass(frozen=True)
class FeedPage:
    cursor: str
    epoch: int
    entries: tuple[FeedEntry, ...]
    more: bool
    server_time: int


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_page(doc: Mapping[str, Any]) -> FeedPage:
    """Validate a whole page before anything of it is applied."""
    cursor, epoch, more, server_time = (
        doc.get("cursor"),
        doc.get("epoch"),
        doc.get("more"),
        doc.get("server_time"),
    )
    if (
        not isinstance(cursor, str)
        or not 0 < len(cursor) <= MAX_CURSOR_LENGTH
        or not cursor.isprintable()
    ):
        raise FeedError("bad cursor")
    if not _is_int(epoch) or epoch < 0:
        raise FeedError("bad epoch")
    if not isinstance(more, bool):
        raise FeedError("bad more")
    if not _is_int(server_time):
        raise FeedError("bad server_time")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise FeedError("bad entries")
    entries = []
    for raw in raw_entries:
        if not isinstance(raw, dict):
            raise FeedError("bad entry")
        kind, value, exp = raw.get("kind"), raw.get("value"), raw.get("exp")
        not_after = raw.get("not_after", 0 if kind == "jti" else None)  # unused for jti
        if kind not in KINDS:
            # Not understood means not applied: fail the sync (and, past the grace period,
            # closed) rather than accept tokens a newer broker has revoked.
            raise FeedError(f"unknown entry kind {str(kind)[:32]!r}")
        if not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE_LENGTH:
            raise FeedError("bad entry value")
        if not _is_int(not_after) or not _is_int(exp):
            raise FeedError("bad entry dates")
        entries.append(FeedEntry(kind=kind, value=value, not_after=not_after, exp=exp))
    return FeedPage(
        cursor=cursor, epoch=epoch, entries=tuple(entries), more=more, server_time=server_time
    )


def basic_auth(client_id: str, client_secret: str) -> str:
    """client_secret_basic: each part form-urlencoded, then base64 (RFC 6749 §2.3.1)."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


class RevocationFeed:
    """Polls the broker's revocation feed and answers `check(token)`.

    The polling thread starts with `start()` (ErrandAuth and ErrandMiddleware call it when
    they are set up), and again in each process on its first `check()` or `status()` (so a
    feed built before gunicorn forks its workers still runs in every worker). With
    `background=False` nothing starts a thread: the caller drives `sync_once()`."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        poll_interval_seconds: float = 0.5,
        feed_grace_seconds: float = 30.0,
        page_limit: int = 1000,
        http_timeout_seconds: float = 3.0,
        startup_wait_seconds: float | None = None,
        revocations_url: str | None = None,
        background: bool = True,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # The feed sends our client secret: only over https (or to this machine).
        check_broker_url(issuer, "issuer (the broker's URL)")
        if revocations_url is not None:
            check_broker_url(revocations_url, "revocations_url")
        if not client_id or not client_secret:
            raise ValueError("the feed needs the resource server's client_id and client_secret")
        if poll_interval_seconds <= 0 or http_timeout_seconds <= 0:
            raise ValueError("poll_interval_seconds and http_timeout_seconds must be positive")
        if feed_grace_seconds <= poll_interval_seconds:
            raise ValueError("feed_grace_seconds must be longer than poll_interval_seconds")
        if not 1 <= page_limit <= 10000:
            raise ValueError("page_limit must be 1 to 10000")
        self.issuer = issuer
        self.url = revocations_url or issuer.rstrip("/") + "/revocations"
        self.client_id = client_id
        self._authorization = basic_auth(client_id, client_secret)
        self.poll_interval_seconds = poll_interval_seconds
        self.feed_grace_seconds = feed_grace_seconds
        self.page_limit = page_limit
        self.http_timeout_seconds = http_timeout_seconds
        self.startup_wait_seconds = (
            http_timeout_seconds + poll_interval_seconds
            if startup_wait_seconds is None
            else startup_wait_seconds
        )
        self.background = background
        self._clock = clock
        self._monotonic = monotonic
        self._session = ProcessSession()
        # Revocation state; replaced or mutated only under _lock.
        self._cursor = "0"
        self._epoch = 0
        self._jti: dict[str, int] = {}  # jti -> exp
        self._cutoffs: dict[str, dict[str, tuple[int, int]]] = {k: {} for k in CUTOFF_KINDS}
        self._suspended: dict[str, tuple[int, int]] = {}  # task -> (not_after, exp)
        self._last_success: float | None = None  # monotonic start of the last page of a full sync
        self._last_success_wall: float | None = None
        self._server_time: int | None = None
        self._failing = False
        self._closed_logged = False
        self._init_process_state()

    def _init_process_state(self) -> None:
        """Locks, events and the thread belong to one process; a forked child makes its own."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        if self._last_success is not None:
            self._synced.set()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never the secret
        return f"RevocationFeed(url={self.url!r}, client_id={self.client_id!r})"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> RevocationFeed:
        """Start the polling thread in this process (idempotent)."""
        if os.getpid() != self._pid:
            self._init_process_state()
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="errand-revocation-feed", daemon=True
                )
                self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def __enter__(self) -> RevocationFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until a first full sync has succeeded in this process's view."""
        return self._synced.wait(timeout)

    # -- the check --------------------------------------------------------------------------
    def ensure_started(self) -> bool:
        """Start polling in this process if it should be and is not (a fresh feed, or a
        forked worker: threads do not survive fork). True if it started the thread now."""
        if (
            self.background
            and (os.getpid() != self._pid or self._thread is None or not self._thread.is_alive())
            and not self._stop.is_set()
        ):
            self.start()
            return True
        return False

    def check(self, token: VerifiedToken) -> None:
        """Raise TokenRevoked, or FeedUnavailable when the feed is past its grace period."""
        if self.ensure_started() and self._last_success is None:
            self._synced.wait(self.startup_wait_seconds)
        with self._lock:
            last = self._last_success
            if last is None or self._monotonic() - last > self.feed_grace_seconds:
                raise FeedUnavailable()
            if token.epoch < self._epoch:
                raise TokenRevoked(reason="revoked_epoch")
            if token.jti in self._jti:
                raise TokenRevoked(reason="revoked_jti")
            for kind, claim in CUTOFF_KINDS.items():
                value = token.get(claim)
                if not isinstance(value, str):
                    raise InvalidToken(
                        f"The access token's {claim} claim is missing.", reason=f"bad_{claim}"
                    )
                cutoff = self._cutoffs[kind].get(value)
                if cutoff is not None and token.iat <= cutoff[0]:
                    raise TokenRevoked(reason=f"revoked_{kind}")
            suspension = self._suspended.get(token.task_id)
            if suspension is not None and token.iat <= suspension[0]:
                raise TokenRevoked(reason="task_suspended")

    # -- status -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def last_sync_time(self) -> float | None:
        """Wall-clock time of the last successful sync (None before the first)."""
        return self._last_success_wall

    def seconds_since_sync(self) -> float | None:
        last = self._last_success
        return None if last is None else self._monotonic() - last

    @property
    def healthy(self) -> bool:
        age = self.seconds_since_sync()
        return age is not None and age <= self.feed_grace_seconds

    def entry_count(self) -> int:
        with self._lock:
            cutoffs = sum(len(v) for v in self._cutoffs.values())
            return len(self._jti) + cutoffs + len(self._suspended)

    def status(self) -> dict[str, Any]:
        """For a readiness endpoint: no secrets, no entry values. Starts polling in this
        process if it has not started (a readiness probe may come before any request)."""
        self.ensure_started()
        age = self.seconds_since_sync()
        return {
            "healthy": self.healthy,
            "seconds_since_sync": None if age is None else round(age, 3),
            "epoch": self._epoch,
            "entries": self.entry_count(),
            "server_time": self._server_time,
        }

    # -- syncing ----------------------------------------------------------------------------
    def sync_once(self) -> None:
        """Fetch pages until `more` is false; raises FeedError if any page fails. Pages that
        arrived are applied even if a later one fails: entries only ever revoke more."""
        for _ in range(MAX_PAGES_PER_SYNC):
            started = self._monotonic()
            page = self._fetch(self._cursor)
            self._apply(page)
            if not page.more:
                with self._lock:
                    self._last_success = started
                    self._last_success_wall = self._clock()
                    self._server_time = page.server_time
                    self._forget_expired()
                self._synced.set()
                return
        raise FeedError(f"still `more` after {MAX_PAGES_PER_SYNC} pages")

    def _fetch(self, cursor: str) -> FeedPage:
        try:
            body, _ = bounded_get(
                self._session.get(),
                self.url,
                params={"since": cursor, "limit": str(self.page_limit)},
                headers={"Authorization": self._authorization, "Accept": "application/json"},
                timeout=self.http_timeout_seconds,
                max_bytes=MAX_PAGE_BYTES,
            )
            return parse_page(strict_json_object(body))
        except HttpError as err:
            raise FeedError(f"GET {self.url}: {err}") from err
        except JoseError as err:
            raise FeedError(f"GET {self.url}: {err}") from err

    def _apply(self, page: FeedPage) -> None:
        with self._lock:
            if page.epoch < self._epoch:
                # The cut never moves backwards; a lower epoch is a broker fault, not an undo.
                log.error(
                    "errand_rs: revocation feed epoch went backwards (%d < %d); keeping %d",
                    page.epoch,
                    self._epoch,
                    self._epoch,
                )
            self._epoch = max(self._epoch, page.epoch)
            for entry in page.entries:
                if entry.kind == "jti":
                    self._jti[entry.value] = max(entry.exp, self._jti.get(entry.value, entry.exp))
                    continue
                if entry.kind == "task_suspended":
                    self._suspended[entry.value] = (entry.not_after, entry.exp)
                    continue
                if entry.kind == "task_resumed":
                    self._suspended.pop(entry.value, None)
                    continue
                table = self._cutoffs[entry.kind]
                old = table.get(entry.value)
                if old is None:
                    table[entry.value] = (entry.not_after, entry.exp)
                else:  # a cut-off only moves forward, and lives as long as its longest cover
                    table[entry.value] = (max(old[0], entry.not_after), max(old[1], entry.exp))
            self._cursor = page.cursor

    def _forget_expired(self) -> None:
        horizon = self._clock() - RETAIN_AFTER_EXP_SECONDS
        self._jti = {k: exp for k, exp in self._jti.items() if exp >= horizon}
        for kind, table in self._cutoffs.items():
            self._cutoffs[kind] = {k: v for k, v in table.items() if v[1] >= horizon}
        self._suspended = {k: v for k, v in self._suspended.items() if v[1] >= horizon}

    def _run(self) -> None:
        failures = 0
        max_backoff = max(self.poll_interval_seconds, min(5.0, self.feed_grace_seconds / 4))
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as err:  # the thread must survive anything; fail closed by age
                failures += 1
                if not self._failing:
                    log.warning("errand_rs: revocation feed sync failed: %s", _describe(err))
                    self._failing = True
            else:
                if self._failing:
                    log.warning("errand_rs: revocation feed recovered")
                self._failing = False
                failures = 0
            closed = failures > 0 and not self.healthy
            if closed and not self._closed_logged:
                log.error(
                    "errand_rs: no revocation feed sync within %.1fs: rejecting every token",
                    self.feed_grace_seconds,
                )
            self._closed_logged = closed
            delay = (
                self.poll_interval_seconds * (2 ** min(failures, 6))
                if failures
                else self.poll_interval_seconds
            )
            self._stop.wait(min(delay, max_backoff))


def _describe(err: Exception) -> str:
    return str(err) if isinstance(err, FeedError) else type(err).__name__
