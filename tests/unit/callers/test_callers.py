"""Each caller type, through POST /token, with the denials the issue lists."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.forms import bearer_form, exchange_form
from tests.support.platforms import (
    AUD,
    BILLING,
    DEPLOY,
    STATUS,
    TICKETS,
    TRUST_DOMAIN,
    assertion,
    denied,
    github_token,
    gitlab_token,
    introspect_body,
    k8s_claims,
    k8s_token,
    last_denial,
    ok,
    sso_token,
    state_keys,
    svid,
)
from tests.support.redis import stream_events


# -- GitHub Actions -----------------------------------------------------------------------
@pytest.mark.parametrize("immutable_sub", [False, True], ids=["classic-sub", "july-2026-sub"])
def test_github_both_sub_forms_match_on_ids(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, immutable_sub: bool
) -> None:
    token = github_token(wkeys.github, clock.now(), immutable_sub=immutable_sub)
    body = ok(
        wclient.post("/token", data=exchange_form(token, audience=DEPLOY, scope="deploy:write"))
    )
    assert introspect_body(wclient, body["access_token"])["sub"] == "gh-deploy"
    issued = [e for e in stream_events(wsvc) if e.get("outcome") == "issued"][-1]
    assert issued["workload"]["repository_id"] == "100200300" and issued["workload"]["run_id"]


def test_github_release_branch_pattern(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = github_token(wkeys.github, clock.now(), ref="refs/heads/release/2.1")
    body = ok(wclient.post("/token", data=exchange_form(token, audience=DEPLOY)))
    assert body["scope"] == "release:write"


def test_github_release_pattern_stays_in_one_segment(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    token = github_token(wkeys.github, clock.now(), ref="refs/heads/release/2.1/evil")
    assert "'ref'" in denied(wclient.post("/token", data=exchange_form(token, audience=DEPLOY)))


def test_wrong_repository_is_denied_without_the_expected_value(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    token = github_token(wkeys.github, clock.now(), repository="acme/other", repository_id="999")
    message = denied(wclient.post("/token", data=exchange_form(token, audience=DEPLOY)))
    assert "'repository_id'" in message and "100200300" not in message
    audit = last_denial(wsvc)
    assert audit["reason"] == "no_matching_identity"
    assert audit["details"]["compared"]["repository_id"] == {
        "expected": "100200300",
        "actual": "999",
    }


def test_recycled_repository_name_with_another_id_is_denied(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    """acme/app deleted and re-created (or the org name re-registered): same names, new ids."""
    token = github_token(
        wkeys.github,
        clock.now(),
        repository="acme/app",
        repository_owner="acme",
        repository_id="555000111",
        repository_owner_id="98765",
    )
    message = denied(wclient.post("/token", data=exchange_form(token, audience=DEPLOY)))
    assert "'repository_id'" in message and "'repository_owner_id'" in message


def test_unprotected_release_ref_is_denied(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = github_token(
        wkeys.github, clock.now(), ref="refs/heads/release/2.1", ref_protected="false"
    )
    # The nearest rule may be gh-deploy (ref) or gh-release (ref_protected): one claim each.
    assert "no identity matches" in denied(
        wclient.post("/token", data=exchange_form(token, audience=DEPLOY))
    )
    protected = github_token(wkeys.github, clock.now(), ref="refs/heads/release/2.1")
    ok(wclient.post("/token", data=exchange_form(protected, audience=DEPLOY)))


def test_a_github_token_is_single_use(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = github_token(wkeys.github, clock.now())
    ok(wclient.post("/token", data=exchange_form(token, audience=DEPLOY)))
    assert "already been used" in denied(
        wclient.post("/token", data=exchange_form(token, audience=DEPLOY))
    )


# -- GitLab -------------------------------------------------------------------------------
def test_gitlab_protected_main(wclient: Any, wsvc: Any, wkeys: Any, clock: Any) -> None:
    body = ok(
        wclient.post(
            "/token", data=exchange_form(gitlab_token(wkeys.gitlab, clock.now()), audience=DEPLOY)
        )
    )
    assert introspect_body(wclient, body["access_token"])["sub"] == "gl-deploy"
    assert [e for e in stream_events(wsvc) if e.get("outcome") == "issued"][-1]["workload"][
        "pipeline_id"
    ] == "1212"


def test_gitlab_unprotected_ref_is_denied(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = gitlab_token(wkeys.gitlab, clock.now(), ref_protected="false")
    assert "'ref_protected'" in denied(
        wclient.post("/token", data=exchange_form(token, audience=DEPLOY))
    )


# -- Kubernetes ---------------------------------------------------------------------------
def test_kubernetes_service_account_with_pod_binding_in_audit(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    token = k8s_token(wkeys.k8s, clock.now())
    body = ok(wclient.post("/token", data=exchange_form(token)))
    assert introspect_body(wclient, body["access_token"])["aud"] == BILLING
    issued = [e for e in stream_events(wsvc) if e.get("outcome") == "issued"][-1]
    binding = issued["workload"]["kubernetes"]
    assert binding["namespace"] == "billing" and binding["service_account"] == "billing-api"
    assert binding["pod"] == {
        "name": "billing-api-7d4b9",
        "uid": "5e0bd49b-f040-43b0-99b7-22765a53f7f3",
    }
    assert binding["node"]["name"] == "node-a"
    # reuse-within-lifetime: the kubelet hands the pod the same token until it rotates it
    ok(wclient.post("/token", data=exchange_form(token)))


def test_kubernetes_wrong_namespace_is_denied(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = k8s_token(wkeys.k8s, clock.now(), namespace="payments")
    assert "'namespace'" in denied(wclient.post("/token", data=exchange_form(token)))


def test_kubernetes_sub_must_agree_with_the_claim(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    from broker.dev.issuer import mint_with

    claims = k8s_claims(clock.now(), sub="system:serviceaccount:billing:admin")
    message = denied(wclient.post("/token", data=exchange_form(mint_with(wkeys.k8s, claims))))
    assert "'sub' does not agree with its 'kubernetes.io' claim" in message
    assert last_denial(wsvc)["reason"] == "subject_mismatch"


def test_kubernetes_sub_alone_is_not_enough(wclient: Any, wkeys: Any, clock: Any) -> None:
    from broker.dev.issuer import mint_with

    claims = k8s_claims(clock.now())
    del claims["kubernetes.io"]
    assert "'kubernetes.io' claim is missing" in denied(
        wclient.post("/token", data=exchange_form(mint_with(wkeys.k8s, claims)))
    )


# -- SPIFFE -------------------------------------------------------------------------------
def test_spiffe_svid_routed_by_trust_domain_and_reusable(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    token = svid(wkeys.spiffe, clock.now())
    first = ok(wclient.post("/token", data=exchange_form(token)))
    second = ok(wclient.post("/token", data=exchange_form(token)))  # SPIRE re-serves cached SVIDs
    assert first["access_token"] != second["access_token"]
    issued = [e for e in stream_events(wsvc) if e.get("outcome") == "issued"][-1]
    assert issued["workload"]["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/ns/orders/sa/api"
    assert issued["issuer"] == "spiffe-prod"


def test_svid_from_another_trust_domain_is_denied(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    token = svid(
        wkeys.spiffe_other, clock.now(), spiffe_id="spiffe://staging.acme.example/ns/orders/sa/api"
    )
    assert "trust domain is not trusted" in denied(
        wclient.post("/token", data=exchange_form(token))
    )
    assert last_denial(wsvc)["reason"] == "unknown_issuer"


def test_svid_path_outside_the_rule(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = svid(wkeys.spiffe, clock.now(), spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/payments/sa/api")
    assert "'spiffe_id'" in denied(wclient.post("/token", data=exchange_form(token)))


def test_svid_signed_by_another_domain_key_is_denied(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = svid(wkeys.spiffe_other, clock.now())  # our trust domain in sub, a foreign key
    assert "subject_token:" in denied(wclient.post("/token", data=exchange_form(token)))


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://prod.acme.example",  # a trust domain, not a workload
        "spiffe://prod.acme.example/ns/../sa/api",
        "spiffe://prod.acme.example/ns//api",
        "spiffe://PROD.acme.example/ns/orders/sa/api",
        "spiffe://prod.acme.example/ns/orders/sa/api?x=1",
    ],
)
def test_malformed_spiffe_ids_are_refused(wclient: Any, wkeys: Any, clock: Any, sub: str) -> None:
    token = svid(wkeys.spiffe, clock.now(), spiffe_id=sub)
    denied(wclient.post("/token", data=exchange_form(token)))


def test_svid_with_an_unconfigured_iss_is_refused(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = svid(wkeys.spiffe, clock.now(), iss="https://spire.prod.acme.example")
    assert "issuer is not trusted" in denied(wclient.post("/token", data=exchange_form(token)))


def test_svid_without_iat_is_accepted_but_lifetime_is_bounded(
    wclient: Any, wkeys: Any, clock: Any
) -> None:
    ok(wclient.post("/token", data=exchange_form(svid(wkeys.spiffe, clock.now(), _drop=("iat",)))))
    long = svid(wkeys.spiffe, clock.now(), _drop=("iat",), exp=int(clock.now()) + 10 * 86400)
    assert "lifetime" in denied(wclient.post("/token", data=exchange_form(long)))


# -- agents with their own keys -----------------------------------------------------------
def agent_form(token: str, **extra: Any) -> dict[str, Any]:
    return exchange_form(
        token, **{"task_id": "triage-42", "purpose": "summarise open tickets", **extra}
    )


def test_agent_assertion(wclient: Any, wsvc: Any, wkeys: Any, clock: Any) -> None:
    body = ok(
        wclient.post(
            "/token", data=agent_form(assertion(wkeys.agent, "agent-summariser", clock.now()))
        )
    )
    info = introspect_body(wclient, body["access_token"])
    assert (
        info["sub"] == "agent-summariser"
        and info["aud"] == TICKETS
        and body["task_id"] == "triage-42"
    )
    assert body["expires_in"] == 300
    issued = [e for e in stream_events(wsvc) if e.get("outcome") == "issued"][-1]
    assert issued["purpose"] == "summarise open tickets" and issued["task"] == "triage-42"
    grant = wsvc.store.list_grants(
        now=int(clock.now()), task_id="triage-42", identity_ids=None, limit=5
    )
    assert grant[0].purpose == "summarise open tickets"


def test_agent_ttl_is_capped_by_its_type(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = assertion(wkeys.agent, "agent-summariser", clock.now())
    body = ok(wclient.post("/token", data=agent_form(token, requested_lifetime="900")))
    assert body["expires_in"] == 600


def test_replayed_assertion_is_refused(wclient: Any, wsvc: Any, wkeys: Any, clock: Any) -> None:
    token = assertion(wkeys.agent, "agent-summariser", clock.now())
    ok(wclient.post("/token", data=agent_form(token)))
    assert "already been used" in denied(
        wclient.post("/token", data=agent_form(token, task_id="other"))
    )
    assert last_denial(wsvc)["reason"] == "replayed"


@pytest.mark.parametrize("missing", ["task_id", "purpose"])
def test_agent_without_task_or_purpose_is_refused_and_burns_nothing(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, missing: str
) -> None:
    token = assertion(wkeys.agent, "agent-summariser", clock.now())
    before = state_keys(wsvc)
    message = denied(wclient.post("/token", data=agent_form(token, **{missing: None})))
    assert message.startswith(f"{missing}: required for agent identities")
    assert state_keys(wsvc) == before  # no grant, no replay entry: the jti is not burnt
    ok(wclient.post("/token", data=agent_form(token)))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"aud": "https://errand.test"}, "'aud'"),
        (
            {"aud": ["https://errand.test/token", "https://peer.example/token"]},
            "'aud' claim names other parties",
        ),
        ({"sub": "someone-else"}, "'sub' must equal its 'iss'"),
        ({"_drop": ("jti",)}, "'jti'"),
        ({"exp": 1_800_000_000 + 3600}, "lifetime"),
    ],
)
def test_bad_assertions(
    wclient: Any, wkeys: Any, clock: Any, overrides: dict[str, Any], fragment: str
) -> None:
    token = assertion(wkeys.agent, "agent-summariser", clock.now(), **overrides)
    assert fragment in denied(wclient.post("/token", data=agent_form(token)))


def test_assertion_signed_by_an_unregistered_key(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = assertion(wkeys.stranger, "agent-summariser", clock.now())
    assert "not registered for this identity" in denied(
        wclient.post("/token", data=agent_form(token))
    )


def test_agent_keys_cannot_act_for_another_identity(wclient: Any, wkeys: Any, clock: Any) -> None:
    """The partner's key signing as the agent: keys are per identity."""
    token = assertion(wkeys.partner, "agent-summariser", clock.now())
    denied(wclient.post("/token", data=agent_form(token)))


# -- RFC 7523 jwt-bearer --------------------------------------------------------------------
def test_jwt_bearer_with_a_ci_token(wclient: Any, wkeys: Any, clock: Any) -> None:
    body = ok(
        wclient.post(
            "/token", data=bearer_form(github_token(wkeys.github, clock.now()), audience=DEPLOY)
        )
    )
    assert "issued_token_type" not in body and body["token_type"] == "Bearer"
    assert introspect_body(wclient, body["access_token"])["sub"] == "gh-deploy"


def test_same_token_through_both_grants_is_one_use(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = github_token(wkeys.github, clock.now())
    ok(wclient.post("/token", data=exchange_form(token, audience=DEPLOY)))
    message = denied(
        wclient.post("/token", data=bearer_form(token, audience=DEPLOY)), "invalid_grant"
    )
    assert message.startswith("assertion: the token has already been used")


def test_agent_through_jwt_bearer(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = assertion(wkeys.agent, "agent-summariser", clock.now())
    ok(wclient.post("/token", data=bearer_form(token, task_id="t-1", purpose="triage")))
    assert "already been used" in denied(
        wclient.post("/token", data=bearer_form(token, task_id="t-2", purpose="triage")),
        "invalid_grant",
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda k, now: "not-a-jwt",
        lambda k, now: github_token(k.stranger, now),
        lambda k, now: github_token(k.github, now, repository_id="1"),
        lambda k, now: github_token(k.github, now - 3600),
    ],
    ids=["malformed", "bad-signature", "no-identity", "expired"],
)
def test_jwt_bearer_errors_are_invalid_grant(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any, make: Any
) -> None:
    message = denied(
        wclient.post("/token", data=bearer_form(make(wkeys, clock.now()), audience=DEPLOY)),
        "invalid_grant",
    )
    assert message.startswith("assertion: ")
    assert last_denial(wsvc)["grant_type"].endswith("jwt-bearer")


def test_jwt_bearer_form_errors_are_invalid_request(wclient: Any) -> None:
    denied(
        wclient.post("/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"})
    )


def test_jwt_bearer_policy_errors_keep_their_codes(wclient: Any, wkeys: Any, clock: Any) -> None:
    token = github_token(wkeys.github, clock.now())
    resp = wclient.post("/token", data=bearer_form(token, audience="https://evil.example"))
    assert resp.get_json()["error"] == "invalid_target"


# -- partners and humans ---------------------------------------------------------------------
def test_partner_gets_one_listed_audience_per_token(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    def partner(**extra: Any) -> Any:
        return wclient.post(
            "/token",
            data=exchange_form(
                assertion(wkeys.partner, "partner-acme-logistics", clock.now()), **extra
            ),
        )

    assert partner(audience=[STATUS, DEPLOY]).get_json()["error"] == "invalid_target"
    assert last_denial(wsvc)["reason"] == "single_audience"
    assert partner(audience=BILLING).get_json()["error"] == "invalid_target"
    ok(partner(audience=STATUS))


def test_human_identity_through_a_human_issuer(wclient: Any, wkeys: Any, clock: Any) -> None:
    body = ok(wclient.post("/token", data=exchange_form(sso_token(wkeys.sso, clock.now()))))
    assert introspect_body(wclient, body["access_token"])["identity_type"] == "human"


def test_workload_token_never_matches_a_human(wclient: Any, wkeys: Any, clock: Any) -> None:
    """A CI token carrying an `email` claim still cannot be alice: rules are per issuer and
    human identities only take human issuers."""
    token = github_token(wkeys.github, clock.now(), email="alice@acme.example", repository_id="1")
    denied(wclient.post("/token", data=exchange_form(token)))


def test_kind_mismatch_is_refused_even_if_config_allowed_it(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    """Defence in depth: force a workload issuer onto a human identity behind the loader's back."""
    import dataclasses

    from broker.policy.matcher import IdentityMatcher

    sso = dataclasses.replace(wsvc.config.issuers["sso"], human=False)
    config = dataclasses.replace(wsvc.config, issuers={**wsvc.config.issuers, "sso": sso})
    wsvc.config, wsvc.matcher = config, IdentityMatcher(config)
    wsvc.verifier._config = config
    assert "cannot act for the matched identity" in denied(
        wclient.post("/token", data=exchange_form(sso_token(wkeys.sso, clock.now())))
    )


def test_every_denial_leaves_no_state(wclient: Any, wsvc: Any, wkeys: Any, clock: Any) -> None:
    now = clock.now()
    before = state_keys(wsvc)
    tokens = [
        github_token(wkeys.github, now, repository_id="1"),
        gitlab_token(wkeys.gitlab, now, ref_protected="false"),
        k8s_token(wkeys.k8s, now, namespace="payments"),
        svid(wkeys.spiffe, now, spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/x/sa/y"),
        assertion(wkeys.agent, "agent-summariser", now, aud=AUD),
    ]
    for token in tokens:
        denied(wclient.post("/token", data=exchange_form(token, task_id="t", purpose="p")))
    assert state_keys(wsvc) == before
