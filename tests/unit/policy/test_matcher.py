"""broker/policy/matcher.py: exact claim matching; a miss names claims, never expected values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.policy.matcher import IdentityMatcher, Match, Miss, claim_text
from tests.support.builders import UNIT_ISSUER, fake_services, make_app, make_config
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error
from tests.support.jws import assert_not_leaked
from tests.support.redis import grant_state_keys, stream_events

DEPLOY = {"repository_id": "100200300", "repository_owner_id": "4242", "ref": "refs/heads/main"}


@pytest.fixture
def matcher(config) -> IdentityMatcher:
    return IdentityMatcher(config)


# -- the matcher directly ----------------------------------------------------------------------


def test_exact_claims_match_one_identity(matcher) -> None:
    found = matcher.match("gha", {**DEPLOY, "extra": "ignored"})
    assert isinstance(found, Match)
    assert found.identity.id == "acme-deploy"
    assert found.rule.id == "acme-deploy#0"
    release = matcher.match("gha", {**DEPLOY, "ref": "refs/heads/release"})
    assert isinstance(release, Match) and release.identity.id == "acme-release"


def test_other_issuer_never_matches(matcher) -> None:
    found = matcher.match("gitlab", DEPLOY)
    assert isinstance(found, Miss)
    assert found.claims == () and found.rule_id is None


@pytest.mark.parametrize(
    "value",
    [
        "refs/heads/main ",
        "REFS/HEADS/MAIN",
        "refs/heads/mai",
        "refs/heads/main\x00",
        "refs/heads/.*",
        "",
        None,
        ["refs/heads/main"],
        {"ref": "refs/heads/main"},
    ],
)
def test_near_misses_do_not_match(matcher, value: Any) -> None:
    claims = dict(DEPLOY)
    if value is None:
        del claims["ref"]
    else:
        claims["ref"] = value
    found = matcher.match("gha", claims)
    assert isinstance(found, Miss)
    assert "ref" in found.claims
    assert found.compared["ref"]["expected"] in ("refs/heads/main", "refs/heads/release")


def test_integer_claim_matches_a_string_rule(matcher) -> None:
    found = matcher.match(
        "gha", {**DEPLOY, "repository_id": 100200300, "repository_owner_id": 4242}
    )
    assert isinstance(found, Match) and found.identity.id == "acme-deploy"


@pytest.mark.parametrize("value", [100200300.0, "100200300.0", " 100200300", "0100200300"])
def test_numbers_that_only_look_alike_do_not_match(matcher, value: Any) -> None:
    assert isinstance(matcher.match("gha", {**DEPLOY, "repository_id": value}), Miss)


@pytest.mark.parametrize(
    ("token_value", "rule_value"),
    [(True, "True"), (True, "true"), (True, "1"), (False, "False"), (False, "0")],
)
def test_bool_claims_never_match(key_dir, clock, token_value: bool, rule_value: str) -> None:
    cfg = make_config(
        UNIT_ISSUER,
        mutate=lambda d: d["identities"][0]["match"][0]["claims"].update(ref_protected=rule_value),
    )
    m = IdentityMatcher(cfg)
    assert isinstance(m.match("gha", {**DEPLOY, "ref_protected": rule_value}), Match)
    found = m.match("gha", {**DEPLOY, "ref_protected": token_value})
    assert isinstance(found, Miss)
    assert found.claims == ("ref_protected",)
    assert claim_text(token_value) is None


def test_miss_reports_the_nearest_rule_and_the_compared_values(matcher) -> None:
    found = matcher.match("gha", {**DEPLOY, "repository_id": "999", "ref": "refs/heads/release"})
    assert isinstance(found, Miss)
    assert found.rule_id == "acme-release#0"
    assert found.claims == ("repository_id",)
    assert found.compared == {"repository_id": {"expected": "100200300", "actual": "999"}}


def test_compared_actual_values_are_truncated(matcher) -> None:
    found = matcher.match("gha", {**DEPLOY, "ref": "x" * 5000})
    assert isinstance(found, Miss)
    assert len(found.compared["ref"]["actual"]) <= 256


# -- through POST /token ---------------------------------------------------------------------


def test_no_match_names_the_claim_but_not_the_expected_value(exchange, subject, svc, logs) -> None:
    token = subject(repository_id="999")
    resp = exchange(token)
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "'repository_id'" in body["error_description"]
    text = resp.get_data(as_text=True)
    for expected in (
        "100200300",
        "4242",
        "refs/heads/main",
        "refs/heads/release",
        "acme-deploy",
        "acme-release",
    ):
        assert expected not in text
    assert grant_state_keys(svc) == set()

    # The audit event says which rule missed and the values compared ...
    (event,) = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert event["reason"] == "no_matching_identity"
    assert event["details"]["nearest_rule"] in ("acme-deploy#0", "acme-release#0")
    assert event["details"]["compared"]["repository_id"] == {
        "expected": "100200300",
        "actual": "999",
    }
    assert event["issuer"] == "gha"
    assert event["token_hmac"] and len(event["token_hmac"]) == 64
    # ... and never the token, in the stream or in any log line.
    assert_not_leaked(token, [json.dumps(e) for e in stream_events(svc)])
    assert_not_leaked(token, logs.lines())
    assert logs.audit_events()[-1]["reason"] == "no_matching_identity"


def test_no_identity_for_the_issuer_is_refused(key_dir, clock, fetcher, subject, tmp_path) -> None:
    cfg = make_config(UNIT_ISSUER, mutate=lambda d: d.update(identities=[]))
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    client = make_app(svc, tmp_path).test_client()

    body = assert_oauth_error(
        client.post("/token", data=deploy_form(subject())), 400, "invalid_request"
    )
    assert "no identity" in body["error_description"]


def test_integer_claim_in_the_token_is_accepted_over_http(exchange, subject) -> None:
    resp = exchange(subject(repository_id=100200300, repository_owner_id=4242))
    assert resp.status_code == 200, resp.get_json()


def test_bool_claim_in_the_token_is_refused_over_http(
    key_dir, clock, fetcher, subject, tmp_path
) -> None:
    cfg = make_config(
        UNIT_ISSUER,
        mutate=lambda d: d["identities"][0]["match"][0]["claims"].update(ref_protected="true"),
    )
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    client = make_app(svc, tmp_path).test_client()

    ok = client.post("/token", data=deploy_form(subject(ref_protected="true")))
    assert ok.status_code == 200, ok.get_json()
    resp = client.post("/token", data=deploy_form(subject(ref_protected=True)))
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "'ref_protected'" in body["error_description"]
