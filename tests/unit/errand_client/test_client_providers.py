"""Subject-token providers: GitHub Actions token service, GitLab id_tokens, token files."""

from __future__ import annotations

import base64
import json

import pytest

from errand_client import SubjectTokenError, file_provider, github_actions_provider
from errand_client.providers import MissingOIDCEnvironment, env_provider
from errand_client.retry import Retryable


def claims_of(token: str) -> dict:  # type: ignore[type-arg]
    seg = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def test_missing_request_variables_names_both_causes() -> None:
    with pytest.raises(MissingOIDCEnvironment) as info:
        github_actions_provider("errand", environ={"GITHUB_ACTIONS": "true"})
    text = str(info.value)
    assert "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN" in text
    assert "permissions: id-token: write" in text
    assert "fork" in text
    assert "static secret" in text


def test_one_missing_variable_is_named() -> None:
    with pytest.raises(MissingOIDCEnvironment, match="ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set"):
        github_actions_provider("errand", environ={"ACTIONS_ID_TOKEN_REQUEST_URL": "https://x"})


def test_fetches_a_fresh_token_for_the_audience(broker, gha_env) -> None:
    provider = github_actions_provider("errand aud/1", environ=gha_env)
    first, second = provider(), provider()
    assert first != second
    assert claims_of(first)["aud"] == "errand aud/1"
    req = broker.oidc_requests[0]
    assert req["query"]["api-version"] == ["2.0"]
    assert req["query"]["audience"] == ["errand aud/1"]
    assert req["authorization"] == "bearer runtime-request-token-0123456789"
    assert "runtime-request-token" not in repr(provider)


def test_token_service_errors(broker, gha_env) -> None:
    provider = github_actions_provider("errand", environ=gha_env)
    broker.oidc_script = [503]
    with pytest.raises(Retryable):
        provider()
    broker.oidc_script = [403]
    with pytest.raises(SubjectTokenError, match="HTTP 403"):
        provider()


def test_file_provider_reads_each_time(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("aaa.bbb.ccc\n")
    provider = file_provider(path)
    assert provider() == "aaa.bbb.ccc"
    path.write_text("ddd.eee.fff")  # rotated in place by kubelet / SPIRE
    assert provider() == "ddd.eee.fff"
    path.write_text("not a jwt")
    with pytest.raises(SubjectTokenError) as info:
        provider()
    assert "not a jwt" not in str(info.value)
    with pytest.raises(SubjectTokenError, match="cannot read"):
        file_provider(tmp_path / "missing")()


def test_env_provider_explains_gitlab_id_tokens() -> None:
    with pytest.raises(SubjectTokenError, match="id_tokens"):
        env_provider("ERRAND_ID_TOKEN", environ={})()
    assert env_provider("T", environ={"T": "a.b.c"})() == "a.b.c"
