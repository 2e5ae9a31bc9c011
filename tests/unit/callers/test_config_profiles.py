"""Issuer profiles, identity types, agent keys and human separation at configuration load."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from broker.config import ConfigError, parse_config
from tests.support.builders import make_config
from tests.support.platforms import jwks_of


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def ident(raw: dict[str, Any], identity_id: str) -> dict[str, Any]:
    return next(i for i in raw["identities"] if i["id"] == identity_id)


@pytest.fixture
def raw(world_raw: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(world_raw)


def test_world_config_loads_with_profile_defaults(raw: dict[str, Any]) -> None:
    config = parse_config(raw)
    replay = {i.id: i.replay for i in config.issuers.values()}
    assert replay == {
        "github": "single-use",
        "gitlab": "single-use",
        "k8s": "reuse-within-lifetime",
        "spiffe-prod": "reuse-within-lifetime",
        "sso": "single-use",
    }
    assert config.issuers["spiffe-prod"].issuer == ""
    agent = config.agent_issuers["agent-summariser"]
    assert agent.audience == "https://errand.test/token"
    assert agent.replay == "single-use" and agent.max_token_lifetime_seconds == 300
    assert agent.id == "agent:agent-summariser" and agent.issuer == "agent-summariser"
    assert config.issuer_by_url("agent-summariser") is agent
    assert ident_rule_ids(config, "agent-summariser") == ["agent-summariser#keys"]


def ident_rule_ids(config: Any, identity_id: str) -> list[str]:
    return [r.id for r in config.identity(identity_id).rules]


def test_unknown_claim_for_a_profile_is_refused(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"]["repo_id"] = "1"
    message = refused(raw)
    assert (
        "identities.0.match.0.claims.repo_id: not a claim the github-actions profile matches"
        in message
    )


@pytest.mark.parametrize("issuer", ["github", "gitlab"])
def test_sub_is_never_a_rule_for_ci_profiles(raw: dict[str, Any], issuer: str) -> None:
    target = ident(raw, "gh-deploy" if issuer == "github" else "gl-deploy")
    target["match"][0]["claims"]["sub"] = "repo:acme/app:ref:refs/heads/main"
    assert "rules never use 'sub'" in refused(raw)


def test_registered_claims_are_not_rules(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"]["aud"] = "x"
    assert "registered JWT claim" in refused(raw)


def test_ids_are_exact_never_patterns(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"]["repository_id"] = "1002*"
    assert "claims.repository_id: an immutable id is matched exactly" in refused(raw)


def test_a_github_rule_must_name_an_owner_or_repository(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"] = {"ref": "refs/heads/main"}
    assert "must bind one of" in refused(raw)


def test_a_leading_wildcard_owner_is_not_an_anchor(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"] = {
        "repository": "*/app",
        "ref": "refs/heads/main",
    }
    assert "must bind one of" in refused(raw)


def test_names_without_ids_load_with_a_warning(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"] = {
        "repository": "acme/app",
        "ref": "refs/heads/main",
    }
    config = parse_config(raw)
    assert any("binds names only" in w and "repository_id" in w for w in config.warnings)


def test_bad_patterns_are_refused_with_their_path(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"][0]["claims"]["ref"] = "refs/**"
    assert "identities.0.match.0.claims.ref: '**' is not supported" in refused(raw)


def test_overlapping_patterns_are_refused(raw: dict[str, Any]) -> None:
    extra = copy.deepcopy(ident(raw, "gh-release"))
    extra["id"] = "gh-hotfix"
    extra["match"][0]["claims"]["ref"] = "refs/heads/release/hotfix-*"
    raw["identities"].append(extra)
    assert "'gh-release' (gh-release#0) and 'gh-hotfix' (gh-hotfix#0) could match" in refused(raw)


def test_disjoint_patterns_are_accepted(raw: dict[str, Any]) -> None:
    extra = copy.deepcopy(ident(raw, "gh-release"))
    extra["id"] = "gh-tags"
    extra["match"][0]["claims"]["ref"] = "refs/tags/*"
    raw["identities"].append(extra)
    assert parse_config(raw).identity("gh-tags") is not None


def test_kubernetes_rules_use_namespace_and_service_account(raw: dict[str, Any]) -> None:
    ident(raw, "k8s-billing")["match"][0]["claims"] = {"sub": "system:serviceaccount:billing:api"}
    assert "rules use 'namespace' and 'service_account'" in refused(raw)
    ident(raw, "k8s-billing")["match"][0]["claims"] = {"service_account": "default"}
    assert "must bind one of namespace" in refused(raw)


def test_spiffe_rules_stay_in_their_trust_domain(raw: dict[str, Any]) -> None:
    ident(raw, "spiffe-orders")["match"][0]["claims"]["spiffe_id"] = (
        "spiffe://other.example/ns/orders/sa/*"
    )
    assert "must be a SPIFFE ID in trust domain 'prod.acme.example'" in refused(raw)


def test_spiffe_issuer_needs_trust_domain_and_bundle(raw: dict[str, Any]) -> None:
    spiffe = raw["issuers"][3]
    del spiffe["trust_domain"]
    assert "issuers.3.trust_domain: a spiffe issuer names its trust domain" in refused(raw)
    spiffe["trust_domain"] = "prod.acme.example"
    del spiffe["jwks_file"]
    assert "issuers.3.jwks_file: a spiffe issuer needs its bundle" in refused(raw)


def test_only_spiffe_may_omit_the_issuer_url(raw: dict[str, Any]) -> None:
    del raw["issuers"][0]["issuer"]
    assert "issuers.0.issuer: Missing data for required field." in refused(raw)


def test_missing_bundle_file_is_a_warning_not_an_error(raw: dict[str, Any], tmp_path: Any) -> None:
    raw["issuers"][3]["jwks_file"] = str(tmp_path / "nope.json")
    assert any("does not exist" in w for w in parse_config(raw).warnings)


def test_reserved_issuer_ids(raw: dict[str, Any]) -> None:
    raw["issuers"][4]["id"] = "agent:x"
    assert "are reserved" in refused(raw)


# -- human and workload -------------------------------------------------------------------
def test_a_human_identity_needs_a_human_issuer(raw: dict[str, Any]) -> None:
    ident(raw, "alice")["match"][0]["issuer"] = "github"
    ident(raw, "alice")["match"][0]["claims"] = {"repository_id": "1", "actor": "alice"}
    assert "a human identity can only be matched by an issuer marked 'human: true'" in refused(raw)


def test_a_human_issuer_matches_no_workload(raw: dict[str, Any]) -> None:
    ident(raw, "gh-deploy")["match"].append(
        {"issuer": "sso", "claims": {"email": "ci@acme.example"}}
    )
    assert "is a human issuer: its tokens match human identities only" in refused(raw)


def test_workload_profiles_cannot_be_human(raw: dict[str, Any]) -> None:
    raw["issuers"][0]["human"] = True
    assert "issuers.0.human: a github-actions issuer proves workloads, never people" in refused(raw)


def test_human_flag_is_a_real_boolean(raw: dict[str, Any]) -> None:
    raw["issuers"][4]["human"] = "yes"
    assert "issuers.4.human:" in refused(raw)


def test_humans_do_not_register_keys(raw: dict[str, Any], wkeys: Any) -> None:
    ident(raw, "alice")["keys"] = {"jwks": jwks_of(wkeys.stranger)}
    assert "a human identity signs in through a human issuer" in refused(raw)


# -- agent keys ---------------------------------------------------------------------------
def test_keys_must_be_public(raw: dict[str, Any], wkeys: Any) -> None:
    jwk = wkeys.agent.public_jwk()
    jwk["d"] = "secret"
    ident(raw, "agent-summariser")["keys"] = {"jwks": {"keys": [jwk]}}
    message = refused(raw)
    assert "private or symmetric key material" in message
    assert "secret" not in message


def test_keys_need_one_usable_key(raw: dict[str, Any]) -> None:
    ident(raw, "agent-summariser")["keys"] = {"jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]}}
    assert "private or symmetric key material" in refused(raw)
    ident(raw, "agent-summariser")["keys"] = {
        "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "bad", "y": "bad"}]}
    }
    assert "no usable public signing key" in refused(raw)


def test_keys_by_url_or_inline_not_both(raw: dict[str, Any], wkeys: Any) -> None:
    ident(raw, "agent-summariser")["keys"] = {
        "jwks": jwks_of(wkeys.agent),
        "jwks_uri": "https://a.example/jwks",
    }
    assert "give exactly one of jwks or jwks_uri" in refused(raw)
    ident(raw, "agent-summariser")["keys"] = {
        "jwks_uri": "https://agents.acme.example/summariser/jwks"
    }
    assert parse_config(raw).agent_issuers["agent-summariser"].jwks_uri.endswith("/jwks")


def test_an_identity_needs_rules_or_keys(raw: dict[str, Any]) -> None:
    del ident(raw, "agent-summariser")["keys"]
    assert "identities.5.match:" in refused(raw)


# -- identity types -----------------------------------------------------------------------
def test_type_rules_default_and_tighten(raw: dict[str, Any]) -> None:
    raw["identity_types"] = {
        "service": {"max_ttl_seconds": 600, "default_ttl_seconds": 120, "require_task": True}
    }
    config = parse_config(raw)
    assert config.type_rules("service").max_ttl_seconds == 600
    assert config.type_rules("service").default_ttl_seconds == 120
    assert config.type_rules("service").require_task is True
    assert config.type_rules("agent").require_task and config.type_rules("agent").require_purpose
    assert config.type_rules("partner").single_audience


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"agent": {"max_ttl_seconds": 3600}},
            "identity_types.agent.max_ttl_seconds: can only tighten",
        ),
        (
            {"agent": {"require_task": False}},
            "identity_types.agent.require_task: the built-in rule requires it",
        ),
        ({"partner": {"single_audience": False}}, "identity_types.partner.single_audience"),
        (
            {"human": {"default_ttl_seconds": 1000}},
            "identity_types.human.default_ttl_seconds: must not exceed",
        ),
        ({"robot": {}}, "identity_types"),
    ],
)
def test_type_rules_cannot_loosen(raw: dict[str, Any], given: dict[str, Any], message: str) -> None:
    raw["identity_types"] = given
    assert message in refused(raw)


def test_type_audience_confinement(raw: dict[str, Any]) -> None:
    raw["identity_types"] = {"partner": {"audiences": ["https://status.acme.example"]}}
    message = refused(raw)
    assert "identities.6.allow.audiences: partner identities are confined" in message
    assert "https://deploy.acme.example" in message


def test_allowance_above_the_type_maximum_is_capped_with_a_warning(raw: dict[str, Any]) -> None:
    config = parse_config(raw)
    assert any(
        "identities.5.allow.max_ttl_seconds: capped at 600 for agent" in w for w in config.warnings
    )


def test_existing_configs_keep_loading(make_old: Callable[[], Any] | None = None) -> None:
    config = make_config("https://token.actions.githubusercontent.example")
    gha = config.issuers["gha"]
    assert gha.profile == "generic" and gha.replay == "single-use" and not gha.human
    assert config.warnings == ()
