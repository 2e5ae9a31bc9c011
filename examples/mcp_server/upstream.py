"""No passthrough: the MCP server calls an upstream API for an agent with a token of its own.

The agent's token is addressed to the MCP server; forwarding it would let the upstream (or
anyone who sees it there) act as the agent at the MCP server, and the upstream could not tell
who is calling. Instead the server exchanges it at Errand (RFC 8693 §2.1):

    subject_token  = the agent's access token        (whom the call is for)
    actor_token    = the server's own assertion      (who is calling: AgentKey)
    resource       = the upstream's URL              (exactly one audience)
    scope          = one scope, narrower than the agent's

and Errand answers with a token addressed to the upstream whose `act` claim names the
server, bound to the agent's task: completing the task ends it too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class UpstreamError(Exception):
    """The exchange or the upstream call failed; the message carries no token."""


@dataclass
class Upstream:
    broker_url: str  # Errand, e.g. http://127.0.0.1:8080
    url: str  # the upstream API's resource identifier, and where notes are POSTed
    scope: str  # the one scope the exchanged token carries
    actor_assertion: Callable[[], str]  # the MCP server's own identity (an AgentKey)
    timeout_seconds: float = 5.0

    def exchange(self, agent_token: str) -> dict[str, Any]:
        session = requests.Session()
        session.trust_env = False
        resp = session.post(
            self.broker_url.rstrip("/") + "/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": agent_token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "actor_token": self.actor_assertion(),
                "actor_token_type": JWT_TYPE,
                "resource": self.url,
                "scope": self.scope,
            },
            timeout=self.timeout_seconds,
            allow_redirects=False,
        )
        if resp.status_code != 200:
            error = resp.json().get("error") if resp.content else None
            raise UpstreamError(f"Errand refused the exchange ({resp.status_code} {error})")
        return dict(resp.json())

    def publish(self, agent_token: str, note: dict[str, Any]) -> dict[str, Any]:
        issued = self.exchange(agent_token)
        session = requests.Session()
        session.trust_env = False
        resp = session.post(
            self.url,
            json=note,
            headers={"Authorization": f"Bearer {issued['access_token']}"},
            timeout=self.timeout_seconds,
            allow_redirects=False,
        )
        if resp.status_code != 200:
            raise UpstreamError(f"the upstream refused the call ({resp.status_code})")
        return dict(resp.json())
