"""An agent's tokens for MCP servers: one per task and per server, reused within the task,
renewed before expiry, and the task ended when the run ends.

    with mcp_task(client, "triage", purpose="triage new tickets", scopes={
        "http://127.0.0.1:8001/mcp": "notes:discover notes:read",
        "http://127.0.0.1:8002/mcp": "notes:discover notes:write",
    }) as tokens:
        headers = tokens.headers("http://127.0.0.1:8001/mcp")   # Authorization: Bearer ...
    # the task is complete here: every token it held is dead

Each MCP server is an RFC 8707 resource: the token for it is asked with `resource=<its URL>`
and carries exactly that audience, so a server never receives a token another server
would accept. The first request for a server exchanges; later ones reuse the token until
`refresh_margin(expires_in)` before it expires (errand_client/task.py; the client's clock is
injectable). All of a run's tokens belong to one task id, so completing it ends them all.

DPoP (RFC 9449): with `ErrandClient(..., dpop=True)` every token is bound to the client's
key (`client.dpop_key`), and McpTokens uses that key by itself (`dpop=True` says so
explicitly and fails if the client has none): each request then carries
`Authorization: DPoP <token>`, a fresh proof naming its method and URL and, for the MCP DPoP
profile, `content_digest` over the exact body (pass `body=`), plus a `Content-Digest` header.
A key other than the client's is refused: the tokens would be bound to the wrong key. Any
other object with `headers(access_token, method, url, *, body=None)` is used as given."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from errand_client.client import ErrandClient
from errand_client.dpop import DpopKey
from errand_client.errors import ErrandError
from errand_client.task import TaskToken
from errand_client.wire import new_task_id

log = logging.getLogger("errand_client")

_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^#\s]+")


class ResourceProof(Protocol):
    """Signs the per-request headers for a sender-constrained token (RFC 9449 §7.1)."""

    def headers(
        self, access_token: str, method: str, url: str, *, body: bytes | None = None
    ) -> dict[str, str]: ...


class McpTokens:
    """The tokens of one task, one per MCP server (resource). Thread-safe."""

    def __init__(
        self,
        client: ErrandClient,
        task_id: str,
        *,
        purpose: str | None,
        scopes: Mapping[str, str | Sequence[str]] | None = None,
        lifetime: int | None = None,
        dpop: bool | ResourceProof | None = None,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.purpose = purpose
        self.lifetime = lifetime
        self.dpop = _resource_proof(client, dpop)
        self._scopes = dict(scopes or {})
        for resource in self._scopes:
            _check_resource(resource)
        self._tokens: dict[str, TaskToken] = {}
        self._lock = threading.Lock()
        self.exchanges = 0  # how many tokens were asked for (renewals not counted)

    def __repr__(self) -> str:
        return f"McpTokens(task_id={self.task_id!r}, resources={sorted(self._tokens)!r})"

    def token(self, resource: str) -> TaskToken:
        """The task's token for `resource`, asked for on first use."""
        with self._lock:
            tok = self._tokens.get(resource)
            if tok is None:
                _check_resource(resource)
                request: dict[str, Any] = {
                    "audience": None,
                    "resources": [resource],
                    "scopes": self._scopes.get(resource),
                    "purpose": self.purpose,
                    "lifetime": self.lifetime,
                    "task_id": self.task_id,
                }
                tok = TaskToken(self.client, request, self.client.exchange(**request))
                self._tokens[resource] = tok
                self.exchanges += 1
        return tok

    def access_token(self, resource: str) -> str:
        return self.token(resource).access_token  # renewed here when due

    def headers(
        self,
        resource: str,
        *,
        method: str = "POST",
        url: str | None = None,
        body: bytes | None = None,
    ) -> dict[str, str]:
        """The authorization headers of one request to `resource` (at `url`, by default the
        resource URL itself, which for MCP is the streamable HTTP endpoint)."""
        token = self.access_token(resource)
        if self.dpop is not None:
            return self.dpop.headers(token, method, url or resource, body=body)
        return {"Authorization": f"Bearer {token}"}

    def end(self) -> bool:
        """Complete the task: every token it holds (for every server) dies. False when no
        token was ever issued (there is nothing to end) or the task had already ended."""
        with self._lock:
            tokens = list(self._tokens.values())
        if not tokens:
            return False
        return self.client.complete(tokens[0])


def _resource_proof(
    client: ErrandClient, dpop: bool | ResourceProof | None
) -> ResourceProof | None:
    """What signs each request: the client's DPoP key whenever it binds tokens to one (a
    bound token sent as Bearer is refused everywhere), never a key it does not bind to."""
    key = client.dpop_key
    if dpop is None or dpop is False:
        if dpop is False and key is not None:
            raise ValueError("the client binds its tokens to a DPoP key: they need DPoP proofs")
        return key
    if dpop is True:
        if key is None:
            raise ValueError("dpop=True needs ErrandClient(..., dpop=True or a DpopKey)")
        return key
    if isinstance(dpop, DpopKey) and dpop is not key:
        raise ValueError("the tokens are bound to the client's DPoP key; pass that key")
    return dpop


def _check_resource(resource: str) -> None:
    # RFC 8707 §2: an absolute URI without a fragment; the broker checks it again.
    if not isinstance(resource, str) or not _ABSOLUTE_URI.fullmatch(resource):
        raise ValueError("an MCP server's resource must be an absolute URI without a fragment")


@contextmanager
def mcp_task(
    client: ErrandClient,
    name: str,
    *,
    purpose: str | None,
    scopes: Mapping[str, str | Sequence[str]] | None = None,
    lifetime: int | None = None,
    task_id: str | None = None,
    dpop: bool | ResourceProof | None = None,
) -> Iterator[McpTokens]:
    """Run an agent task against MCP servers; the task is completed when the block exits,
    on success or on an exception (whose completion failure is logged, not raised over it)."""
    tokens = McpTokens(
        client,
        task_id or new_task_id(name),
        purpose=purpose,
        scopes=scopes,
        lifetime=lifetime,
        dpop=dpop,
    )
    try:
        yield tokens
    except BaseException:
        try:
            tokens.end()
        except ErrandError as err:
            log.error(
                "task %s: could not complete it (%s); its tokens live until they expire",
                tokens.task_id,
                err,
            )
        raise
    tokens.end()
    log.info("task %s: completed (%d MCP servers)", tokens.task_id, tokens.exchanges)
