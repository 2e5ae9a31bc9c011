"""POST /token on arbitrary forms: never a 5xx, always an RFC 6749 §5.2 JSON error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.dev.issuer import github_claims
from broker.domain.models import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT
from tests.support.builders import AUDIENCE, DEPLOY_AUD, UNIT_ISSUER, gha_token
from tests.support.jws import es256_sign

SETTINGS = settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

KNOWN = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "requested_token_type",
    "audience",
    "resource",
    "scope",
    "actor_token",
    "actor_token_type",
    "purpose",
    "requested_lifetime",
    "client_id",
    "client_secret",
]
INTERESTING = st.sampled_from(
    [
        "",
        " ",
        GRANT_TYPE_TOKEN_EXCHANGE,
        TOKEN_TYPE_JWT,
        TOKEN_TYPE_ID_TOKEN,
        DEPLOY_AUD,
        "https://evil.example",
        "deploy:read",
        "deploy:read deploy:write",
        "a.b.c",
        "0",
        "600",
        "-1",
        "\x00",
        "é",
        "x" * 600,
    ]
)
values = st.one_of(INTERESTING, st.text(max_size=40))
keys = st.one_of(st.sampled_from(KNOWN), st.text(min_size=1, max_size=15)).filter(
    lambda k: k != "task_id"
)
form_values = st.one_of(values, st.lists(values, min_size=1, max_size=3))


def check(resp: Any) -> None:
    assert resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body, dict)
    assert resp.headers.get("Cache-Control") == "no-store"
    if resp.status_code != 200:
        assert isinstance(body.get("error"), str) and body["error"]
        assert isinstance(body.get("error_description"), str) and body["error_description"]
        assert "access_token" not in body
    else:
        assert body["token_type"] == "Bearer" and body["access_token"]


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(form=st.dictionaries(keys, form_values, max_size=8))
def test_arbitrary_forms_never_5xx(prop_env: dict[str, Any], form: dict[str, Any]) -> None:
    check(prop_env["client"].post("/token", data=form))


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(
    overrides=st.dictionaries(keys, form_values, max_size=4),
    drop=st.lists(st.sampled_from(KNOWN), max_size=2),
    claims=st.dictionaries(
        st.sampled_from(["ref", "repository_id", "aud", "exp", "iat", "nbf", "jti", "iss"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        max_size=2,
    ),
)
def test_near_valid_forms_never_5xx(
    prop_env: dict[str, Any], overrides: dict[str, Any], drop: list[str], claims: dict[str, Any]
) -> None:
    now = prop_env["clock"].now()
    key = prop_env["key"]
    body = github_claims(issuer=UNIT_ISSUER, audience=AUDIENCE, now=now)
    body.update(claims)
    # Signed by hand: PyJWT's encoder refuses some of the odd claim values we want to send.
    token = es256_sign(key, {"alg": "ES256", "typ": "JWT", "kid": key.kid}, body)
    form: dict[str, Any] = {
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": TOKEN_TYPE_JWT,
        "audience": DEPLOY_AUD,
        "scope": "deploy:read",
    }
    for name in drop:
        form.pop(name, None)
    form.update(overrides)
    check(prop_env["client"].post("/token", data=form))


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(task_id=st.text(max_size=140))
def test_any_task_id_never_5xx(prop_env: dict[str, Any], task_id: str) -> None:
    now = prop_env["clock"].now()
    form = {
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": gha_token(prop_env["key"], UNIT_ISSUER, now=now),
        "subject_token_type": TOKEN_TYPE_JWT,
        "audience": DEPLOY_AUD,
        "task_id": task_id,
    }
    check(prop_env["client"].post("/token", data=form))
