"""Request forms for POST /token, spelled with the RFCs' own URNs (never the broker's
constants, so a typo in the product cannot hide behind the same typo in a test)."""

from __future__ import annotations

from typing import Any

from tests.support.builders import DEPLOY_AUD

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # RFC 8693 §2.1
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # RFC 8693 §3

# What most stories ask for: deploy:write at the deploy audience.
DEPLOY_REQUEST = {"audience": DEPLOY_AUD, "scope": "deploy:write"}


def _drop_none(form: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in form.items() if v is not None}


def exchange_form(subject_token: str | None, **fields: Any) -> dict[str, Any]:
    """A token-exchange form with only the required fields, plus `fields` (a None value leaves
    a field out). Without audience or scope the matching rule's defaults apply."""
    return _drop_none(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TYPE,
            **fields,
        }
    )


def deploy_form(subject_token: str | None, **fields: Any) -> dict[str, Any]:
    """exchange_form() asking for DEPLOY_REQUEST unless `fields` says otherwise."""
    return exchange_form(subject_token, **{**DEPLOY_REQUEST, **fields})


def bearer_form(assertion: str | None, **fields: Any) -> dict[str, Any]:
    """An RFC 7523 jwt-bearer form, plus `fields` (a None value leaves a field out)."""
    return _drop_none({"grant_type": JWT_BEARER, "assertion": assertion, **fields})
