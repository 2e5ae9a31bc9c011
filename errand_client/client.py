"""ErrandClient: exchange a workload identity for a task-scoped token, renew it while the
task runs, and complete the task when it ends.

    client = ErrandClient("https://errand.example", github_actions_provider("errand"))
    with client.task("summarise-tickets", audience="https://tickets.example",
                     scopes=["tickets:read"], purpose="nightly summary") as tok:
        requests.get(api, headers=tok.headers())     # renewed before it expires
    # the task is complete here: every token it held is dead, even if the body raised

Wire format: RFC 8693 token exchange (form-encoded POST {url}/token) with Errand's `task_id`,
`purpose` and `requested_lifetime` extensions; errors are RFC 6749 §5.2 JSON (both read in
errand_client.wire). The renewing token: errand_client.task. Retry policy:
errand_client.retry. Tokens never appear in a repr, a log line or an exception message."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import requests

from errand_client.dpop import DpopKey, wants_nonce
from errand_client.errors import CompletionError, ErrandError, TokenRequestError
from errand_client.retry import Retryable, RetryPolicy, call_with_retry
from errand_client.task import TaskToken, refresh_margin
from errand_client.wire import (
    GRANT_JWT_BEARER,
    GRANT_TOKEN_EXCHANGE,
    GRANTS,
    RETRYABLE_TRANSPORT,
    SAFE_ID,
    SCOPE_TOKEN,
    TOKEN_TYPE_JWT,
    IssuedToken,
    check_url,
    complete_task,
    is_loopback_host,
    log_retry,
    move_task,
    new_task_id,
    read_token_response,
    show_task,
)

__all__ = [
    "ErrandClient",
    "IssuedToken",
    "TaskToken",
    "check_url",
    "complete_task",
    "is_loopback_host",
    "new_task_id",
    "refresh_margin",
]

log = logging.getLogger("errand_client")


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
        dpop: bool | DpopKey = False,
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
        # DPoP (RFC 9449): tokens bound to this key (`token_type: DPoP`); True makes a new
        # EC P-256 key that lives as long as this client.
        self.dpop_key: DpopKey | None = (
            dpop if isinstance(dpop, DpopKey) else DpopKey.generate(clock=clock) if dpop else None
        )

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
        deadline: int | None = None,
        labels: Mapping[str, str] | None = None,
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
        if deadline is not None:
            form.append(("task_deadline", str(int(deadline))))
        form += [("task_label", f"{k}={v}") for k, v in sorted((labels or {}).items())]
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
        deadline: int | None = None,
        labels: Mapping[str, str] | None = None,
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
                deadline=deadline,
                labels=labels,
            )
            started = self._clock()
            resp = self._post_token(form)
            key = self.dpop_key
            nonce = self._dpop_nonce_wanted(resp)
            if key is not None and nonce is not None:
                # RFC 9449 §8: the broker wants its nonce in the proof; one retry with it.
                # The subject token was not spent (a refused request writes nothing).
                key.remember_nonce(self.token_endpoint, nonce)
                resp = self._post_token(form)
            if key is not None:
                key.remember_nonce(self.token_endpoint, resp.headers.get("DPoP-Nonce"))
            return read_token_response(
                resp, started, tid, token_type="DPoP" if key is not None else "Bearer"
            )

        issued = call_with_retry(attempt, self.retry, sleep=self._sleep, on_retry=log_retry)
        log.info(
            "task %s: token issued (scope %s, expires in %d s)",
            tid,
            " ".join(issued.scopes),
            issued.expires_in,
        )
        return issued

    def _post_token(self, form: list[tuple[str, str]]) -> requests.Response:
        headers = {"Accept": "application/json"}
        if self.dpop_key is not None:
            headers["DPoP"] = self.dpop_key.proof("POST", self.token_endpoint)  # fresh each time
        try:
            return self._session.post(
                self.token_endpoint,
                data=form,
                headers=headers,
                timeout=(self.retry.timeout_seconds, self.retry.timeout_seconds),
                allow_redirects=False,  # never re-send a subject token to another place
            )
        except RETRYABLE_TRANSPORT as err:
            raise Retryable(f"cannot reach the broker ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise TokenRequestError("request_failed", type(err).__name__) from None

    def _dpop_nonce_wanted(self, resp: requests.Response) -> str | None:
        if self.dpop_key is None or resp.status_code != 400:
            return None
        try:
            body = resp.json()
        except ValueError:
            return None
        return wants_nonce(resp.status_code, resp.headers, body)

    def _key_for(self, token: str | IssuedToken | TaskToken) -> DpopKey | None:
        """The key a token must be presented with (RFC 9449 §7.1): the client's, when the
        token is bound to it; None for a Bearer token. A bound token this client holds no key
        for cannot be used here."""
        bound = (
            _names_a_key(token) if isinstance(token, str) else token.token_type.lower() == "dpop"
        )
        if not bound:
            return None
        if self.dpop_key is None:
            raise ErrandError(
                "a DPoP-bound token needs the key it is bound to: this client has none"
            )
        return self.dpop_key

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
            self.url,
            value,
            retry=self.retry,
            session=self._session,
            sleep=self._sleep,
            dpop=self._key_for(token),
        )

    def move(self, token: TaskToken | IssuedToken, action: str) -> dict[str, Any] | None:
        """suspend, resume, complete, fail or cancel the token's task (docs/agents.md). The
        broker's answer; None when the token is no longer good or the task already ended."""
        value = token.current_token() if isinstance(token, TaskToken) else token.access_token
        return move_task(
            self.url,
            value,
            token.task_id,
            action,
            retry=self.retry,
            session=self._session,
            sleep=self._sleep,
            dpop=self._key_for(token),
        )

    def show(self, token: TaskToken | IssuedToken) -> dict[str, Any] | None:
        """The token's task as the broker shows its owner (GET /tasks/{id}): state, deadline,
        labels, live grants. None when the token is no longer good or the task is gone."""
        value = token.current_token() if isinstance(token, TaskToken) else token.access_token
        return show_task(
            self.url,
            value,
            token.task_id,
            retry=self.retry,
            session=self._session,
            sleep=self._sleep,
            dpop=self._key_for(token),
        )

    def suspend(self, token: TaskToken | IssuedToken) -> dict[str, Any] | None:
        """Every token of the task answers inactive until `resume`; grants are kept."""
        return self.move(token, "suspend")

    def resume(self, token: TaskToken | IssuedToken) -> dict[str, Any] | None:
        """Unexpired tokens of the task are good again; a TaskToken re-mints as usual."""
        return self.move(token, "resume")

    def fail(self, token: TaskToken | IssuedToken) -> dict[str, Any] | None:
        return self.move(token, "fail")

    def cancel(self, token: TaskToken | IssuedToken) -> dict[str, Any] | None:
        return self.move(token, "cancel")

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
        deadline: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Iterator[TaskToken]:
        """Run a task: a token for it now, renewed while the task outlives it (never past
        `deadline`, a unix time), and the task completed on a clean exit or marked `failed`
        when the body raises. When the body raises, a failure to mark it is logged and the
        body's exception propagates; on a clean exit a completion failure raises
        CompletionError. `labels` bind the task to the outside run (docs/agents.md)."""
        tid = task_id or new_task_id(name)
        request: dict[str, Any] = {
            "audience": audience,
            "resources": resources,
            "scopes": scopes,
            "purpose": purpose,
            "lifetime": lifetime,
            "task_id": tid,
            "deadline": deadline,
            "labels": dict(labels) if labels else None,
        }
        tok = TaskToken(self, request, self.exchange(**request))
        try:
            yield tok
        except BaseException:
            try:
                self.fail(tok)
            except ErrandError as err:
                log.error(
                    "task %s: could not mark it failed (%s); its tokens live until they expire",
                    tid,
                    err,
                )
            raise
        try:
            done = self.complete(tok)
        except ErrandError as err:
            raise CompletionError(f"task {tid}: could not complete it: {err}") from None
        log.info("task %s: %s", tid, "completed" if done else "already ended")


def _names_a_key(token: str) -> bool:
    """Whether a token string of ours carries `cnf` (RFC 9449 §6.1). Read without checking
    the signature: it only picks how to present the token, and the broker checks the rest."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(claims, dict) and isinstance(claims.get("cnf"), dict)
