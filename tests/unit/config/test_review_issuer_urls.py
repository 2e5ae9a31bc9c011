"""Where trusted keys come from is https, except on this machine.

Before: an issuer's `issuer` and `jwks_uri` (and an agent's `keys.jwks_uri`) could be any
http(s) URL, although the broker then trusted keys anyone on the path could swap. Now they
must be https; plain http is accepted only for a loopback host (127.0.0.0/8, ::1,
localhost), with a warning that it is for development. Also: the new per-issuer keys are
validated like every other key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broker.config import ConfigError, parse_config
from broker.domain.models import IssuerOptions
from tests.support.builders import UNIT_ISSUER, config_dict


def raw(**issuer: Any) -> dict[str, Any]:
    data = copy.deepcopy(config_dict(UNIT_ISSUER))
    data["issuers"][0].update(issuer)
    return data


def with_agent_keys(**keys: Any) -> dict[str, Any]:
    data = raw()
    data["identities"].append(
        {
            "id": "agent-x",
            "type": "agent",
            "owner": "ai-team",
            "purpose": "triage",
            "keys": {"algorithms": ["ES256"], **keys},
            "allow": {"audiences": ["https://tickets.example"], "scopes": ["t:read"]},
        }
    )
    return data


def refused(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


NOT_LOOPBACK = [
    "http://ci.example.com",
    "http://10.0.0.1",
    "http://169.254.169.254",
    "http://127.0.0.1.nip.io",
    "http://localhost.example.com",
    "http://[::ffff:127.0.0.1]",  # mapped, but not ::1: we keep the rule literal
]
LOOPBACK = [
    "http://127.0.0.1:8081",
    "http://127.9.8.7",
    "http://[::1]:8443",
    "http://localhost:9000",
]


@pytest.mark.regression
@pytest.mark.parametrize("url", NOT_LOOPBACK)
def test_review_plain_http_issuer_url_is_refused_outside_loopback(url: str) -> None:
    message = refused(raw(issuer=url))
    assert "issuers.0.issuer:" in message and "https" in message


@pytest.mark.regression
@pytest.mark.parametrize("url", NOT_LOOPBACK)
def test_review_plain_http_jwks_uri_is_refused_outside_loopback(url: str) -> None:
    message = refused(raw(jwks_uri=url + "/jwks"))
    assert "issuers.0.jwks_uri:" in message and "https" in message


@pytest.mark.regression
@pytest.mark.parametrize("url", NOT_LOOPBACK)
def test_review_plain_http_agent_jwks_uri_is_refused_outside_loopback(url: str) -> None:
    message = refused(with_agent_keys(jwks_uri=url + "/jwks"))
    assert "identities.2.keys.jwks_uri:" in message and "https" in message


@pytest.mark.parametrize("url", LOOPBACK)
def test_review_plain_http_on_loopback_is_accepted_with_a_warning(url: str) -> None:
    config = parse_config(raw(issuer=url, jwks_uri=url + "/jwks"))
    assert config.issuers["gha"].issuer == url
    warned = [w for w in config.warnings if w.startswith("issuers.0.")]
    assert any("issuers.0.issuer: plain http" in w for w in warned), config.warnings
    assert any("issuers.0.jwks_uri: plain http" in w for w in warned), config.warnings


def test_review_https_issuer_has_no_warning() -> None:
    config = parse_config(raw(jwks_uri="https://keys.example.com/jwks"))
    assert not [w for w in config.warnings if "plain http" in w]


@pytest.mark.regression
@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@issuer.example",
        "https://issuer.example/?a=b",
        "https://issuer.example/#x",
    ],
    ids=["user-info", "query", "fragment"],
)
def test_review_issuer_url_with_user_info_query_or_fragment_is_refused(url: str) -> None:
    assert "issuers.0.issuer:" in refused(raw(issuer=url))


# -- the new per-issuer keys ----------------------------------------------------------------------


def test_review_issuer_options_default_to_the_strict_choice() -> None:
    assert parse_config(raw()).issuers["gha"].options == IssuerOptions()


def test_review_issuer_options_are_read() -> None:
    issuer = parse_config(
        raw(
            jwks_hosts=["keys.example.com", "10.0.0.7:8443"],
            allow_private_network=True,
            allow_multiple_audiences=True,
            expected_azp="ci-client",
        )
    ).issuers["gha"]
    assert issuer.options == IssuerOptions(
        jwks_hosts=("keys.example.com", "10.0.0.7:8443"),
        allow_private_network=True,
        allow_multiple_audiences=True,
        expected_azp="ci-client",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("jwks_hosts", ["https://keys.example.com"]),
        ("jwks_hosts", ["Keys.Example.com"]),
        ("jwks_hosts", ["keys.example.com/path"]),
        ("jwks_hosts", "keys.example.com"),
        ("allow_private_network", "yes"),
        ("allow_multiple_audiences", 1),
        ("expected_azp", ""),
    ],
)
def test_review_bad_issuer_options_are_refused(key: str, value: Any) -> None:
    assert f"issuers.0.{key}" in refused(raw(**{key: value}))


def test_review_agent_keys_may_allow_private_network() -> None:
    config = parse_config(
        with_agent_keys(jwks_uri="https://keys.corp.example/jwks", allow_private_network=True)
    )
    assert config.agent_issuers["agent-x"].options.allow_private_network
