"""ErrandClient: exchange a workload identity for a task-scoped token, renew it while the
task runs, and complete the task when it ends.

    client = ErrandClient("https://errand.example", github_actions_provider("errand"))
    with client.task("summarise-tickets", audience="https://tickets.example",
                     scopes=["tickets:read"], purpose="nightly summary") as tok:
        requests.get(api, headers=tok.headers())     # renewed before it expires
    # the task is complete here: every token it held is dead, even if the body raised

Wire format: RFC 8693 token exchange (form-encoded POST {url}/token) with Errand's `task_id`,
`purpose` and `requested_lifetime` extensions; errors are RFC 6749 §5.2 JSON. Retry policy:
errand_client.retry. Tokens never appear in a repr, a log line or an exception message."""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from errand_client.errors import CompletionError, ErrandError, RetriesExhausted, TokenRequestError
from errand_client.retry import Retryable, RetryPolicy, call_with_retry, parse_retry_after

log = logging.getLogger("errand_client")

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
GRANTS = {"token-exchange": GRANT_TOKEN_EXCHANGE, "jwt-bearer": GRANT_JWT_BEARER}

# The broker's own rules (broker.domain.models): task ids and scope tokens.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
_ACCESS_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,16384}")  # RFC 6750 b64token
_RETRYABLE_TRANSPORT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_FAILED_RENEWAL_PAUSE_SECONDS = 5.0


def refresh_margin(expires_in: float) -> float:
    """How long before expiry to renew: 20% of the lifetime, at least 5 s, at most half.

    Derived from `expires_in`, never a fixed window: a fixed 10-15 minute margin would renew
    a 5-minute token on every call. 300 s -> 60 s; 3600 s -> 720 s; 10 s -> 5 s; 4 s -> 2 s."""
    return min(max(0.2 * expires_in, 5.0), 0.5 * expires_in)


def new_task_id(prefix: str = "task") -> str:
    """A task id the broker accepts, unique per run: a completed task id stays unusable
    (its tombstone outlives every token), so a fixed name cannot be reused."""
    if not SAFE_ID.fullmatch(prefix) or len(prefix) > 100:
        raise ValueError(
            "a task name must match [A-Za-z0-9][A-Za-z0-9._:@+-]* and be at most 100 characters"
        )
    return f"{prefix}-{secrets.token_hex(12)}"


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: traffic that never leaves this machine. A name that
    merely starts like one (127.0.0.1.nip.io, localhost.example.com) is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http: bool = False) -> str:
    """The broker base URL without a trailing slash. Tokens travel only over HTTPS, except to
    a loopback address (or when the caller says so, e.g. inside a service mesh)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unbalanced [ in an IPv6 host
        raise ValueError("the Errand URL must be an absolute http(s) URL") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise ValueError("the Errand URL must be an absolute http(s) URL")
    if parts.scheme == "http" and not allow_http and not is_loopback_host(hostname):
        raise ValueError(
            "the Errand URL must use https (plain http is allowed only to a loopback address)"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("the Errand URL must not carry credentials, a query or a fragment")
    return url.rstrip("/")


def _clean(text: Any, limit: int = 300) -> str:
    """Server-chosen text, made safe to print: no control characters, bounded length."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", str(text))[:limit]


def _error_from(resp: requests.Response) -> TokenRequestError:
    error, description = f"http_{resp.status_code}", "unexpected answer from the server"
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error = _clean(body["error"], 64)
        description = _clean(body.get("error_description") or "")
    return TokenRequestError(error, description, status=resp.status_code)


RETRYABLE_STATUS = (429, 503)  # 503 temporarily_unavailable; 429 a rate limit: both say when


def _retryable_503(resp: requests.Response, what: str) -> Retryable:
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    return Retryable(f"{what} answered {resp.status_code} temporarily_unavailable", retry_after)


@dataclass(frozen=True)
class IssuedToken:
    """One access token. `obtained_at` is when the request was sent, so `expires_at` errs early."""

    access_token: str = field(repr=False)
    expires_in: int
    task_id: str
    scopes: tuple[str, ...]
    issued_token_type: str
    obtained_at: float

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def __repr__(self) -> str:
        return (
            f"IssuedToken(task_id={self.task_id!r}, scopes={self.scopes!r}, "
            f"expires_in={self.expires_in}, expires_at={self.expires_at:.0f})"
        )


def _read_token_response(resp: requests.Response, obtained_at: float, task_id: str) -> IssuedToken:
    if resp.status_code in RETRYABLE_STATUS:
        raise _retryable_503(resp, "the broker")
    if resp.status_code != 200:
        raise _error_from(resp)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TokenRequestError(
            "invalid_response", "the token response is not a JSON object", status=200
        )
    token, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(token, str) or not _ACCESS_TOKEN.fullmatch(token):
        raise TokenRequestError(
            "invalid_response", "the token response has no usable access_token", status=200
        )
    if str(body.get("token_type", "")).lower() != "bearer":
        raise TokenRequestError("invalid_response", "the token_type is not Bearer", status=200)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise TokenRequestError(
            "invalid_response", "the token response has no usable expires_in", status=200
        )
    if body.get("task_id") != task_id:
        raise TokenRequestError(
            "invalid_response", "the broker bound the token to another task", status=200
        )
    scope = body.get("scope")
    return IssuedToken(
        access_token=token,
        expires_in=expires_in,
        task_id=task_id,
        scopes=tuple(scope.split()) if isinstance(scope, str) else (),
        issued_token_type=str(body.get("issued_token_type", "")),
        obtained_at=obtained_at,
    )


def complete_task(
    url: str,
    access_token: str,
    *,
    retry: RetryPolicy | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST {url}/tasks/complete. True when completed now; False when the broker says the
    token is already invalid (401 invalid_token: the task was completed, revoked or expired).
    Retries 503 and connection errors; raises TokenRequestError or RetriesExhausted."""
    policy = retry or RetryPolicy()
    http = session or requests.Session()
    endpoint = url.rstrip("/") + "/tasks/complete"

    def attempt() -> bool:
        try:
            resp = http.post(
                endpoint,
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=(policy.timeout_seconds, policy.timeout_seconds),
                allow_redirects=False,
            )
        except _RETRYABLE_TRANSPORT as err:
            raise Retryable(f"cannot reach the broker ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise TokenRequestError("request_failed", type(err).__name__) from None
        if resp.status_code == 200:
            return True
        if resp.status_code == 401:
            return False
        if resp.status_code in RETRYABLE_STATUS:
            raise _retryable_503(resp, "the broker")
        raise _error_from(resp)

    return call_with_retry(attempt, policy, sleep=sleep, on_retry=_log_retry)


def _log_retry(number: int, signal: Retryable, wait: float) -> None:
    log.warning("attempt %d failed (%s); retrying in %.1f s", number, signal.reason, wait)


class ErrandClient:
    """A client for one Errand broker and one workload identity.

    `subject_token_provider` returns a fresh workload JWT on each call (see
    errand_client.providers and errand_client.assertions.AgentKey). `grant` picks the wire
    format: "token-exchange" (RFC 8693, the default) or "jwt-bearer" (RFC 7523 §2.1, the
    provider's JWT sent as `assertion`)."""

    def __init__(
        self,
        url: str,
        subject_token_provider: Callable[[], str] | None,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        grant: str = "token-exchange",
        allow_http: bool = False,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if grant not in GRANTS:
            raise ValueError(f"grant must be one of {', '.join(GRANTS)}")
        self.url = check_url(url, allow_http=allow_http)
        self.token_endpoint = self.url + "/token"
        self.retry = retry or RetryPolicy(timeout_seconds=timeout)
        self.grant = grant
        self._provider = subject_token_provider
        self._session = session or requests.Session()
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"ErrandClient(url={self.url!r}, provider={self._provider!r}, grant={self.grant!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ErrandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- exchange ----------------------------------------------------------------------------
    def _form(
        self,
        subject_token: str,
        *,
        audiences: Sequence[str],
        resources: Sequence[str],
        scopes: Sequence[str] | None,
        task_id: str,
        purpose: str | None,
        lifetime: int | None,
    ) -> list[tuple[str, str]]:
        if self.grant == "jwt-bearer":
            form = [("grant_type", GRANT_JWT_BEARER), ("assertion", subject_token)]
        else:
            form = [
                ("grant_type", GRANT_TOKEN_EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", TOKEN_TYPE_JWT),
            ]
        form += [("audience", a) for a in audiences]
        form += [("resource", r) for r in resources]
        if scopes is not None:
            form.append(("scope", " ".join(scopes)))
        form.append(("task_id", task_id))
        if purpose:
            form.append(("purpose", purpose))
        if lifetime is not None:
            form.append(("requested_lifetime", str(lifetime)))
        return form

    def exchange(
        self,
        *,
        audience: str | Sequence[str] | None = None,
        resources: Sequence[str] = (),
        scopes: str | Sequence[str] | None = None,
        task_id: str | None = None,
        purpose: str | None = None,
        lifetime: int | None = None,
    ) -> IssuedToken:
        """One token for `task_id` (a new task id when None). Every attempt asks the provider
        for a fresh subject token. We always send a task id, so a grant issued for an attempt
        whose answer was lost belongs to the task and dies when the task completes."""
        if self._provider is None:
            raise ErrandError("this client has no subject-token provider")
        audiences = [audience] if isinstance(audience, str) else list(audience or ())
        scope_list = (
            scopes.split()
            if isinstance(scopes, str)
            else (list(scopes) if scopes is not None else None)
        )
        if scope_list is not None and (
            not scope_list or not all(SCOPE_TOKEN.fullmatch(s) for s in scope_list)
        ):
            raise ValueError("scopes must be non-empty RFC 6749 scope tokens (no spaces or quotes)")
        if lifetime is not None and (
            isinstance(lifetime, bool) or not 1 <= int(lifetime) <= 999_999
        ):
            raise ValueError("lifetime must be a whole number of seconds between 1 and 999999")
        tid = task_id or new_task_id()
        if not SAFE_ID.fullmatch(tid):
            raise ValueError("task_id must match [A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
        if purpose is not None and not 1 <= len(purpose) <= 256:
            raise ValueError("purpose must be 1 to 256 characters")
        provider = self._provider

        def attempt() -> IssuedToken:
            subject = provider()  # fresh per attempt: the last one's jti may be spent
            form = self._form(
                subject,
                audiences=audiences,
                resources=list(resources),
                scopes=scope_list,
                task_id=tid,
                purpose=purpose,
                lifetime=None if lifetime is None else int(lifetime),
            )
            started = self._clock()
            try:
                resp = self._session.post(
                    self.token_endpoint,
                    data=form,
                    headers={"Accept": "application/json"},
                    timeout=(self.retry.timeout_seconds, self.retry.timeout_seconds),
                    allow_redirects=False,  # never re-send a subject token to another place
                )
            except _RETRYABLE_TRANSPORT as err:
                raise Retryable(f"cannot reach the broker ({type(err).__name__})") from None
            except requests.RequestException as err:
                raise TokenRequestError("request_failed", type(err).__name__) from None
            return _read_token_response(resp, started, tid)

        issued = call_with_retry(attempt, self.retry, sleep=self._sleep, on_retry=_log_retry)
        log.info(
            "task %s: token issued (scope %s, expires in %d s)",
            tid,
            " ".join(issued.scopes),
            issued.expires_in,
        )
        return issued

    def complete(self, token: str | IssuedToken | TaskToken) -> bool:
        """End the task the token belongs to; False when it had already ended."""
        value = (
            token
            if isinstance(token, str)
            else token.current_token()
            if isinstance(token, TaskToken)
            else token.access_token
        )
        return complete_task(
            self.url, value, retry=self.retry, session=self._session, sleep=self._sleep
        )

    # -- tasks -------------------------------------------------------------------------------
    @contextmanager
    def task(
        self,
        name: str,
        *,
        audience: str | Sequence[str] | None = None,
        resources: Sequence[str] = (),
        scopes: str | Sequence[str] | None = None,
        purpose: str | None = None,
        lifetime: int | None = None,
        task_id: str | None = None,
    ) -> Iterator[TaskToken]:
        """Run a task: a token for it now, renewed while the task outlives it, and the task
        completed on exit. When the body raises, a completion failure is logged and the
        body's exception propagates; on a clean exit it raises CompletionError."""
        tid = task_id or new_task_id(name)
        request: dict[str, Any] = {
            "audience": audience,
            "resources": resources,
            "scopes": scopes,
            "purpose": purpose,
            "lifetime": lifetime,
            "task_id": tid,
        }
        tok = TaskToken(self, request, self.exchange(**request))
        try:
            yield tok
        except BaseException:
            try:
                self.complete(tok)
            except ErrandError as err:
                log.error(
                    "task %s: could not complete it (%s); its tokens live until they expire",
                    tid,
                    err,
                )
            raise
        try:
            done = self.complete(tok)
        except ErrandError as err:
            raise CompletionError(f"task {tid}: could not complete it: {err}") from None
        log.info("task %s: %s", tid, "completed" if done else "already ended")


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

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

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
