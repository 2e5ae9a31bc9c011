"""The broker's wire format, shared by ErrandClient and the CI commands: the URL check,
task ids, the token response (RFC 8693 §2.2.1) read strictly, RFC 6749 §5.2 errors made safe
to print, and the task endpoints (/tasks/...). Tokens never appear in a repr, a log line or an
exception message."""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from errand_client.dpop import DpopKey, wants_nonce
from errand_client.errors import ErrandError, TokenRequestError
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
RETRYABLE_TRANSPORT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


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
    # "Bearer", or "DPoP" for a token bound to the client's key (RFC 9449 §5): every request
    # with it needs a fresh proof (errand_client.dpop.DpopKey.headers).
    token_type: str = "Bearer"

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in

    def headers(self) -> dict[str, str]:
        if self.token_type != "Bearer":
            raise ErrandError(
                "a DPoP-bound token needs a proof per request: use DpopKey.headers(token, ...)"
            )
        return {"Authorization": f"Bearer {self.access_token}"}

    def __repr__(self) -> str:
        return (
            f"IssuedToken(task_id={self.task_id!r}, scopes={self.scopes!r}, "
            f"expires_in={self.expires_in}, expires_at={self.expires_at:.0f})"
        )


def read_token_response(
    resp: requests.Response,
    obtained_at: float,
    task_id: str,
    *,
    token_type: str = "Bearer",  # noqa: S107 (a token type, not a secret)
) -> IssuedToken:
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
    if str(body.get("token_type", "")).lower() != token_type.lower():
        # Asked for DPoP and got Bearer: the broker did not bind the token to our key.
        raise TokenRequestError(
            "invalid_response", f"the token_type is not {token_type}", status=200
        )
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
        token_type=token_type,
    )


def _task_call(
    http: requests.Session,
    method: str,
    endpoint: str,
    access_token: str,
    dpop: DpopKey | None,
    policy: RetryPolicy,
) -> requests.Response:
    """One request to the broker's task endpoints with a token of the task: Bearer, or for a
    token bound to `dpop` the DPoP scheme and a fresh proof (RFC 9449 §7.1), retried once
    with the broker's nonce when it asks for one (§9: 401 `use_dpop_nonce`)."""

    def send() -> requests.Response:
        headers = {"Accept": "application/json"}
        if dpop is None:
            headers["Authorization"] = f"Bearer {access_token}"
        else:
            headers.update(dpop.headers(access_token, method, endpoint))  # a new proof each time
        try:
            return http.request(
                method,
                endpoint,
                headers=headers,
                timeout=(policy.timeout_seconds, policy.timeout_seconds),
                allow_redirects=False,
            )
        except RETRYABLE_TRANSPORT as err:
            raise Retryable(f"cannot reach the broker ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise TokenRequestError("request_failed", type(err).__name__) from None

    resp = send()
    if dpop is not None:
        nonce = wants_nonce(resp.status_code, resp.headers, None)
        if nonce is not None:
            dpop.remember_nonce(endpoint, nonce)
            resp = send()
        dpop.remember_nonce(endpoint, resp.headers.get("DPoP-Nonce"))
    return resp


def _token_gone(resp: requests.Response) -> bool:
    """A 401 that says the token is no longer good (completed, revoked, expired), not that
    it was presented wrongly: a refused DPoP proof, or a bound token without one, is an error
    to raise, never "already ended"."""
    if resp.status_code != 401:
        return False
    if resp.headers.get("WWW-Authenticate", "").lower().startswith("dpop"):
        return False
    try:
        body = resp.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and body.get("error") == "invalid_dpop_proof")


def complete_task(
    url: str,
    access_token: str,
    *,
    retry: RetryPolicy | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    dpop: DpopKey | None = None,
) -> bool:
    """POST {url}/tasks/complete. True when completed now; False when the broker says the
    token is already invalid (401 invalid_token: the task was completed, revoked or expired).
    A token bound to `dpop` goes with a proof of that key. Retries 503 and connection
    errors; raises TokenRequestError or RetriesExhausted."""
    policy = retry or RetryPolicy()
    http = session or requests.Session()
    endpoint = url.rstrip("/") + "/tasks/complete"

    def attempt() -> bool:
        resp = _task_call(http, "POST", endpoint, access_token, dpop, policy)
        if resp.status_code == 200:
            return True
        if _token_gone(resp):
            return False
        if resp.status_code in RETRYABLE_STATUS:
            raise _retryable_503(resp, "the broker")
        raise _error_from(resp)

    return call_with_retry(attempt, policy, sleep=sleep, on_retry=log_retry)


def move_task(
    url: str,
    access_token: str,
    task_id: str,
    action: str,
    *,
    retry: RetryPolicy | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    dpop: DpopKey | None = None,
) -> dict[str, Any] | None:
    """POST {url}/tasks/{task_id}/{action} (suspend, resume, complete, fail, cancel) with a
    token of the task (bound to `dpop`: with a proof of that key). The broker's answer; None
    when the token is no longer good (401) or the task already ended another way (409).
    Retries 503 and connection errors."""
    if not SAFE_ID.fullmatch(task_id) or action not in (
        "suspend",
        "resume",
        "complete",
        "fail",
        "cancel",
    ):
        raise ValueError("not a task id or a task action")
    policy = retry or RetryPolicy()
    http = session or requests.Session()
    endpoint = f"{url.rstrip('/')}/tasks/{task_id}/{action}"

    def attempt() -> dict[str, Any] | None:
        resp = _task_call(http, "POST", endpoint, access_token, dpop, policy)
        if resp.status_code == 200:
            body = resp.json()
            return body if isinstance(body, dict) else {}
        if _token_gone(resp) or resp.status_code == 409:
            return None
        if resp.status_code in RETRYABLE_STATUS:
            raise _retryable_503(resp, "the broker")
        raise _error_from(resp)

    return call_with_retry(attempt, policy, sleep=sleep, on_retry=log_retry)


def show_task(
    url: str,
    access_token: str,
    task_id: str,
    *,
    retry: RetryPolicy | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    dpop: DpopKey | None = None,
) -> dict[str, Any] | None:
    """GET {url}/tasks/{task_id} with a token of the task: its state, owner, deadline,
    labels and live grants; None when the token is no longer good (401) or the task is
    gone (404)."""
    if not SAFE_ID.fullmatch(task_id):
        raise ValueError("not a task id")
    policy = retry or RetryPolicy()
    http = session or requests.Session()
    endpoint = f"{url.rstrip('/')}/tasks/{task_id}"

    def attempt() -> dict[str, Any] | None:
        resp = _task_call(http, "GET", endpoint, access_token, dpop, policy)
        if resp.status_code == 200:
            body = resp.json()
            return body if isinstance(body, dict) else {}
        if _token_gone(resp) or resp.status_code == 404:
            return None
        if resp.status_code in RETRYABLE_STATUS:
            raise _retryable_503(resp, "the broker")
        raise _error_from(resp)

    return call_with_retry(attempt, policy, sleep=sleep, on_retry=log_retry)


def log_retry(number: int, signal: Retryable, wait: float) -> None:
    log.warning("attempt %d failed (%s); retrying in %.1f s", number, signal.reason, wait)
