"""RFC 8707 `resource` on the token endpoint, and the jwt-bearer grant with an assertion
addressed to the token endpoint (RFC 7523 §3, MCP Workload Identity Federation)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.forms import bearer_form, exchange_form
from tests.support.jws import token_parts
from tests.support.platforms import (
    BILLING,
    DEPLOY,
    STATUS,
    TOKEN_ENDPOINT,
    assertion,
    denied,
    k8s_claims,
    k8s_token,
    last_denial,
    mint_with,
    ok,
    state_keys,
)


# -- resource ---------------------------------------------------------------------------------
def test_the_issued_aud_is_exactly_the_resource(wclient: Any, wkeys: Any, clock: Any) -> None:
    body = ok(
        wclient.post(
            "/token", data=exchange_form(k8s_token(wkeys.k8s, clock.now()), resource=BILLING)
        )
    )
    assert token_parts(body["access_token"])[1]["aud"] == BILLING


def test_an_unregistered_resource_is_invalid_target(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    before = state_keys(wsvc)
    resp = wclient.post(
        "/token",
        data=exchange_form(k8s_token(wkeys.k8s, clock.now()), resource=BILLING + "/other"),
    )
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_target"
    assert state_keys(wsvc) == before  # no token, no state
    # A resource is compared exactly: no prefix, no trailing-slash or case folding.
    for near in (BILLING + "/", BILLING.upper(), BILLING + "?x=1"):
        resp = wclient.post(
            "/token", data=exchange_form(k8s_token(wkeys.k8s, clock.now()), resource=near)
        )
        assert resp.get_json()["error"] == "invalid_target", near


@pytest.mark.parametrize(
    "resource", ["billing.acme.example", "/mcp", BILLING + "#frag", "", "//billing.acme.example"]
)
def test_a_resource_must_be_an_absolute_uri_without_fragment(
    wclient: Any, wkeys: Any, clock: Any, resource: str
) -> None:
    message = denied(
        wclient.post(
            "/token", data=exchange_form(k8s_token(wkeys.k8s, clock.now()), resource=resource)
        )
    )
    assert message.startswith("resource")


def test_several_resources_follow_the_single_audience_rule(
    wclient: Any, wkeys: Any, clock: Any
) -> None:
    """Partners carry one audience per token, whether asked as audience or resource."""

    def partner(**extra: Any) -> Any:
        token = assertion(wkeys.partner, "partner-acme-logistics", clock.now())
        return wclient.post(
            "/token", data=exchange_form(token, task_id="t-1", purpose="status", **extra)
        )

    assert partner(resource=[STATUS, DEPLOY]).get_json()["error"] == "invalid_target"
    assert partner(resource=STATUS, audience=DEPLOY).get_json()["error"] == "invalid_target"
    body = ok(partner(resource=STATUS))
    assert token_parts(body["access_token"])[1]["aud"] == STATUS


# -- jwt-bearer with aud = the token endpoint ------------------------------------------------
def _federated(wkeys: Any, now: float, **overrides: Any) -> str:
    """A Kubernetes service-account token addressed to Errand's token endpoint, as the MCP
    Workload Identity Federation extension asks a workload to request it."""
    return mint_with(wkeys.k8s, k8s_claims(now, aud=[TOKEN_ENDPOINT], **overrides))


def test_jwt_bearer_accepts_an_assertion_addressed_to_the_token_endpoint(
    wclient: Any, wkeys: Any, clock: Any
) -> None:
    body = ok(
        wclient.post("/token", data=bearer_form(_federated(wkeys, clock.now()), resource=BILLING))
    )
    assert token_parts(body["access_token"])[1]["aud"] == BILLING


def test_such_an_assertion_needs_a_jti_and_is_single_use(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    """Kubernetes tokens are reusable within their lifetime when addressed to the issuer's
    configured audience; addressed to the token endpoint they are one-shot assertions."""
    claims = k8s_claims(clock.now(), aud=[TOKEN_ENDPOINT])
    del claims["jti"]
    message = denied(
        wclient.post("/token", data=bearer_form(mint_with(wkeys.k8s, claims))), "invalid_grant"
    )
    assert "'jti'" in message
    token = _federated(wkeys, clock.now())
    ok(wclient.post("/token", data=bearer_form(token)))
    message = denied(wclient.post("/token", data=bearer_form(token)), "invalid_grant")
    assert "already been used" in message
    assert last_denial(wsvc)["reason"] == "replayed"


def test_token_exchange_keeps_the_configured_audience(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    message = denied(wclient.post("/token", data=exchange_form(_federated(wkeys, clock.now()))))
    assert "'aud'" in message
    assert last_denial(wsvc)["reason"] == "wrong_audience"


def test_the_configured_audience_still_works_on_jwt_bearer(
    wclient: Any, wkeys: Any, clock: Any
) -> None:
    token = k8s_token(wkeys.k8s, clock.now())
    ok(wclient.post("/token", data=bearer_form(token)))
    ok(wclient.post("/token", data=bearer_form(token)))  # reuse-within-lifetime, as before


def test_another_endpoint_of_the_broker_is_not_an_audience(
    wclient: Any, wkeys: Any, clock: Any
) -> None:
    for aud in (TOKEN_ENDPOINT + "/", TOKEN_ENDPOINT.replace("/token", "/introspect")):
        token = mint_with(wkeys.k8s, k8s_claims(clock.now(), aud=[aud]))
        denied(wclient.post("/token", data=bearer_form(token)), "invalid_grant")


def test_metadata_lists_both_grants(wclient: Any) -> None:
    meta = wclient.get("/.well-known/oauth-authorization-server").get_json()
    assert {
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    } <= set(meta["grant_types_supported"])
    assert meta["token_endpoint"] == TOKEN_ENDPOINT
