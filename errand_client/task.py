"""TaskToken: the live token of a running task (ErrandClient.task), renewed before it
expires by exchanging a fresh subject token for the same task id."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from errand_client.errors import RetriesExhausted
from errand_client.wire import IssuedToken

if TYPE_CHECKING:
    from errand_client.client import ErrandClient

log = logging.getLogger("errand_client")

_FAILED_RENEWAL_PAUSE_SECONDS = 5.0


def refresh_margin(expires_in: float) -> float:
    """How long before expiry to renew: 20% of the lifetime, at least 5 s, at most half.

    Derived from `expires_in`, never a fixed window: a fixed 10-15 minute margin would renew
    a 5-minute token on every call. 300 s -> 60 s; 3600 s -> 720 s; 10 s -> 5 s; 4 s -> 2 s."""
    return min(max(0.2 * expires_in, 5.0), 0.5 * expires_in)


class TaskToken:
    """The live token of a running task. Reading `access_token` (or `headers()`) renews it
    when less than `refresh_margin(expires_in)` remains, by exchanging a fresh subject token
    for the SAME task id. Thread-safe."""

    def __init__(self, client: ErrandClient, request: dict[str, Any], issued: IssuedToken) -> None:
        self._client = client
        self._request = request
        self._issued = issued
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self.renewals = 0

    def __repr__(self) -> str:
        return (
            f"TaskToken(task_id={self.task_id!r}, scopes={self.scopes!r}, "
            f"expires_at={self.expires_at:.0f})"
        )

    @property
    def task_id(self) -> str:
        return self._issued.task_id

    @property
    def expires_at(self) -> float:
        return self._issued.expires_at

    @property
    def expires_in(self) -> int:
        return self._issued.expires_in

    @property
    def scopes(self) -> tuple[str, ...]:
        return self._issued.scopes

    @property
    def access_token(self) -> str:
        self._renew_if_due()
        return self._issued.access_token

    @property
    def token_type(self) -> str:
        return self._issued.token_type  # DPoP when bound to the client's key

    def headers(self) -> dict[str, str]:
        self._renew_if_due()
        return self._issued.headers()  # refuses a DPoP-bound token: it needs a proof

    def current_token(self) -> str:
        """The token as it is now, without renewing (used to complete the task)."""
        return self._issued.access_token

    def needs_renewal(self, now: float | None = None) -> bool:
        now = self._client._clock() if now is None else now
        return self._issued.expires_at - now <= refresh_margin(self._issued.expires_in)

    def renew(self) -> None:
        """Renew now, whatever the margin says."""
        with self._lock:
            self._renew_locked(force=True)

    def _renew_if_due(self) -> None:
        if not self.needs_renewal():
            return
        with self._lock:
            self._renew_locked(force=False)

    def _renew_locked(self, *, force: bool) -> None:
        now = self._client._clock()
        if not force and (not self.needs_renewal(now) or now < self._paused_until):
            return
        try:
            self._issued = self._client.exchange(**self._request)
        except RetriesExhausted as err:
            # Keep serving the current token while it is valid; try again a little later.
            if now < self._issued.expires_at:
                self._paused_until = now + _FAILED_RENEWAL_PAUSE_SECONDS
                log.warning(
                    "task %s: renewal failed (%s); the current token is still valid",
                    self.task_id,
                    err,
                )
                return
            raise
        self.renewals += 1
        self._paused_until = 0.0
        log.info("task %s: token renewed (expires in %d s)", self.task_id, self._issued.expires_in)
