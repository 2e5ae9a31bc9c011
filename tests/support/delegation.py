"""Delegation chains in tests: actor identities for the inventory, and the hop's form.

Each actor is an agent matched by a CI token of the test repository on its own branch
(`refs/heads/hop-a`, ...), allowed to act for the root identity; `hop-x` has no delegation
rule at all. Forms spell the RFC 8693 URNs, like tests/support/forms.py."""

from __future__ import annotations

from typing import Any

from tests.support.builders import DEPLOY_AUD
from tests.support.forms import JWT_TYPE, TOKEN_EXCHANGE

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # RFC 8693 §3
ACTORS = ("hop-a", "hop-b", "hop-c", "hop-d")
NOT_A_DELEGATE = "hop-x"


def actor_ref(actor: str) -> dict[str, str]:
    """The claims that make a CI token match `actor`."""
    return {"ref": f"refs/heads/{actor}"}


def actor_identity(
    actor: str, issuer_id: str, root_identity: str, delegation: bool = True
) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "id": actor,
        "type": "agent",
        "owner": "agents-team",
        "purpose": f"a sub-agent ({actor}) acting for {root_identity}",
        "match": [
            {
                "issuer": issuer_id,
                "claims": {
                    "repository_id": "100200300",
                    "repository_owner_id": "4242",
                    **actor_ref(actor),
                },
            }
        ],
        "allow": {
            "audiences": [DEPLOY_AUD, "https://status.acme.example"],
            "scopes": ["deploy:read", "deploy:write"],
            "max_ttl_seconds": 600,
        },
    }
    if delegation:
        identity["delegation"] = {"act_for": [root_identity]}
    return identity


def add_actors(raw: dict[str, Any], issuer_id: str, root_identity: str) -> None:
    """Append the actors to a raw configuration document (a `mutate` for make_config)."""
    raw["identities"] += [actor_identity(a, issuer_id, root_identity) for a in ACTORS]
    raw["identities"].append(
        actor_identity(NOT_A_DELEGATE, issuer_id, root_identity, delegation=False)
    )


def hop_form(subject_token: str, actor_token: str | None, **fields: Any) -> dict[str, Any]:
    """A delegation request: our access token as subject, the actor's CI token as actor."""
    form: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "purpose": "act for the root task",
    }
    if actor_token is not None:
        form.update(actor_token=actor_token, actor_token_type=JWT_TYPE)
    form.update(fields)
    return {k: v for k, v in form.items() if v is not None}
