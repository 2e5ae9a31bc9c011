"""broker/policy/engine.py: nothing is silently narrowed; lifetime is the least of three."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from broker.domain.models import TOKEN_TYPE_JWT, ExchangeRequest
from broker.errors import InvalidRequest, InvalidScope, InvalidTarget
from broker.policy.engine import check_identity_usable, evaluate
from tests.support.builders import DEPLOY_AUD, UNIT_ISSUER, fake_services, make_app, make_config
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error
from tests.support.jws import token_parts
from tests.support.redis import grant_state_keys, stream_events

STATUS_AUD = "https://status.acme.example"


def request(**kw: Any) -> ExchangeRequest:
    return ExchangeRequest(subject_token="t", subject_token_type=TOKEN_TYPE_JWT, **kw)


@pytest.fixture
def deploy(config):
    return config.identity("acme-deploy")


@pytest.fixture
def release(config):
    return config.identity("acme-release")


# -- evaluate() directly ----------------------------------------------------------------------


def test_requested_audience_and_scope_within_the_allowance(deploy, config) -> None:
    d = evaluate(deploy, request(audiences=(DEPLOY_AUD,), scopes=("deploy:write",)), config.broker)
    assert d.audiences == (DEPLOY_AUD,)
    assert d.scopes == ("deploy:write",)
    assert d.ttl_seconds == 300  # the broker's default


def test_audience_outside_the_allowance_is_invalid_target(deploy, config) -> None:
    with pytest.raises(InvalidTarget):
        evaluate(
            deploy,
            request(audiences=(DEPLOY_AUD, "https://evil.example"), scopes=None),
            config.broker,
        )


def test_scope_outside_the_allowance_is_invalid_scope_not_narrowed(deploy, config) -> None:
    with pytest.raises(InvalidScope) as info:
        evaluate(
            deploy, request(audiences=(DEPLOY_AUD,), scopes=("deploy:read", "admin")), config.broker
        )
    assert info.value.details["requested"] == ["admin"]
    assert info.value.description == "scope not allowed for this identity: admin"


def test_invalid_scope_names_every_refused_scope_in_request_order(deploy, config) -> None:
    req = request(audiences=(DEPLOY_AUD,), scopes=("pay:all", "deploy:read", "ops:root"))
    with pytest.raises(InvalidScope) as info:
        evaluate(deploy, req, config.broker)
    assert info.value.description == "scope not allowed for this identity: pay:all, ops:root"


def test_invalid_scope_description_is_bounded(deploy, config) -> None:
    scopes = tuple(f"s{i}:" + "x" * 124 for i in range(64))
    with pytest.raises(InvalidScope) as info:
        evaluate(deploy, request(audiences=(DEPLOY_AUD,), scopes=scopes), config.broker)
    text = info.value.description
    assert len(text) < 700
    assert text.startswith("scope not allowed for this identity: s0:xxx")
    assert "s7:" in text and "s8:" not in text
    assert text.endswith("(and 56 more)")
    assert text.isprintable()


def test_no_scope_gives_the_default_scopes(deploy, config) -> None:
    assert evaluate(deploy, request(audiences=(DEPLOY_AUD,)), config.broker).scopes == (
        "deploy:read",
    )


def test_no_scope_without_default_scopes_is_invalid_scope(release, config) -> None:
    with pytest.raises(InvalidScope) as info:
        evaluate(release, request(), config.broker)
    assert info.value.reason == "scope_required"


def test_single_allowed_audience_is_used_when_none_is_requested(release, config) -> None:
    d = evaluate(release, request(scopes=("release:write",)), config.broker)
    assert d.audiences == (DEPLOY_AUD,)


def test_several_allowed_audiences_and_none_requested_is_invalid_target(deploy, config) -> None:
    with pytest.raises(InvalidTarget) as info:
        evaluate(deploy, request(scopes=("deploy:read",)), config.broker)
    assert info.value.reason == "audience_required"


def test_duplicates_are_collapsed(deploy, config) -> None:
    d = evaluate(
        deploy,
        request(
            audiences=(DEPLOY_AUD, STATUS_AUD, DEPLOY_AUD), scopes=("deploy:read", "deploy:read")
        ),
        config.broker,
    )
    assert d.audiences == (DEPLOY_AUD, STATUS_AUD)
    assert d.scopes == ("deploy:read",)


@pytest.mark.parametrize(
    ("requested", "allowance", "global_max", "expected"),
    [
        (None, 600, 900, 300),  # the broker default
        (100, 600, 900, 100),  # requested is least
        (700, 600, 900, 600),  # the allowance is least
        (700, 600, 500, 500),  # the global maximum is least
        (999999, 86400, 900, 900),
    ],
)
def test_lifetime_is_the_least_of_requested_allowance_and_global(
    deploy, requested, allowance, global_max, expected
) -> None:
    import dataclasses

    from broker.domain.models import BrokerOptions

    ident = dataclasses.replace(
        deploy, allow=dataclasses.replace(deploy.allow, max_ttl_seconds=allowance)
    )
    broker = BrokerOptions(
        issuer="https://errand.test",
        default_token_ttl_seconds=300,
        max_token_ttl_seconds=global_max,
    )
    d = evaluate(ident, request(audiences=(DEPLOY_AUD,), requested_lifetime=requested), broker)
    assert d.ttl_seconds == expected


def test_identity_expiry_is_by_date(release) -> None:
    import dataclasses
    from datetime import UTC, datetime

    now = datetime(2027, 6, 30, 23, 59, tzinfo=UTC).timestamp()
    check_identity_usable(dataclasses.replace(release, expires=date(2027, 6, 30)), now)  # last day
    with pytest.raises(InvalidRequest) as info:
        check_identity_usable(dataclasses.replace(release, expires=date(2027, 6, 29)), now)
    assert info.value.reason == "identity_expired"


# -- through POST /token ---------------------------------------------------------------------


def test_expired_identity_is_refused(key_dir, clock, fetcher, subject, tmp_path) -> None:
    cfg = make_config(UNIT_ISSUER, mutate=lambda d: d["identities"][1].update(expires="2020-01-01"))
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    client = make_app(svc, tmp_path).test_client()
    form = deploy_form(subject(ref="refs/heads/release"), scope="release:write")
    body = assert_oauth_error(client.post("/token", data=form), 400, "invalid_request")
    assert "expired" in body["error_description"]
    assert "2020" not in body["error_description"]
    assert grant_state_keys(svc) == set()
    (event,) = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert event["reason"] == "identity_expired"
    assert event["identity"] == "acme-release"


def test_audience_not_allowed_is_invalid_target(exchange, svc) -> None:
    resp = exchange(audience="https://evil.example")
    assert_oauth_error(resp, 400, "invalid_target")
    assert grant_state_keys(svc) == set()
    (event,) = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert event["reason"] == "audience_not_allowed"
    assert event["identity"] == "acme-deploy"


def test_resource_is_treated_like_audience(exchange) -> None:
    assert_oauth_error(
        exchange(audience=None, resource="https://evil.example/api"), 400, "invalid_target"
    )
    assert exchange(audience=None, resource=DEPLOY_AUD).status_code == 200


def test_scope_not_allowed_is_invalid_scope_not_narrowed(exchange, svc) -> None:
    resp = exchange(scope="deploy:read admin")
    assert_oauth_error(resp, 400, "invalid_scope")
    assert "access_token" not in resp.get_json()
    assert grant_state_keys(svc) == set()


def test_no_scope_gives_default_scopes(issued) -> None:
    body = issued(scope=None)
    assert body["scope"] == "deploy:read"
    assert token_parts(body["access_token"])[1]["scope"] == "deploy:read"


def test_identity_without_default_scopes_and_no_scope_is_invalid_scope(exchange, subject) -> None:
    resp = exchange(subject(ref="refs/heads/release"), scope=None)
    assert_oauth_error(resp, 400, "invalid_scope")


def test_several_audiences_allowed_but_none_requested_is_invalid_target(exchange) -> None:
    assert_oauth_error(exchange(audience=None), 400, "invalid_target")


def test_several_audiences_requested(issued) -> None:
    body = issued(audience=[DEPLOY_AUD, STATUS_AUD])
    assert token_parts(body["access_token"])[1]["aud"] == [DEPLOY_AUD, STATUS_AUD]


@pytest.mark.parametrize(
    ("requested", "expected"), [(None, 300), ("60", 60), ("601", 600), ("999999", 600)]
)
def test_lifetime_over_http(issued, requested, expected) -> None:
    body = issued(requested_lifetime=requested)
    assert body["expires_in"] == expected
    claims = token_parts(body["access_token"])[1]
    assert claims["exp"] - claims["iat"] == expected


def test_global_maximum_caps_the_lifetime(key_dir, clock, fetcher, subject, tmp_path) -> None:
    cfg = make_config(UNIT_ISSUER, max_token_ttl_seconds=120, default_token_ttl_seconds=60)
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    client = make_app(svc, tmp_path).test_client()
    resp = client.post("/token", data=deploy_form(subject(), requested_lifetime="600"))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["expires_in"] == 120


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "abc", "1e3", "1000000", " 60"])
def test_bad_requested_lifetime_is_invalid_request(exchange, value) -> None:
    assert_oauth_error(exchange(requested_lifetime=value), 400, "invalid_request")
