"""Every denial over real HTTP is an RFC 6749 §5.2 error: 4xx JSON with `error` and
`error_description`, Cache-Control: no-store, never a token, never a value a rule expects."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from broker.tokens.keyring import generate_key
from tests.support.forms import deploy_form
from tests.support.stack import CLIENT_ID, introspect, mint, post_token

pytestmark = pytest.mark.e2e


def assert_oauth_error(resp: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert "access_token" not in body
    assert "Traceback" not in resp.text and "<html" not in resp.text.lower()
    return dict(body)


# Expected rule values (the configuration's) that a description must never reveal.
SECRET_RULE_VALUES = (
    "100200300",
    "4242",
    "refs/heads/main",
    "https://deploy.acme.example",
    "deploy:write",
)


@pytest.fixture(scope="module")
def counting_server() -> Iterator[Any]:
    """An HTTP server on 127.0.0.1 that counts every request: proof that nothing called it."""

    class Handler(BaseHTTPRequestHandler):
        hits: list[str] = []

        def do_GET(self) -> None:
            Handler.hits.append(self.path)
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    server.hits = Handler.hits  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


CASES = {
    # name: (claim overrides, form overrides, status, error)
    "wrong_repository_id": (dict(repository_id="999999999"), {}, 400, "invalid_request"),
    "wrong_ref": (dict(ref="refs/heads/evil"), {}, 400, "invalid_request"),
    "audience_not_allowed": ({}, dict(audience="https://evil.example"), 400, "invalid_target"),
    "scope_not_allowed": ({}, dict(scope="deploy:admin"), 400, "invalid_scope"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_denials(case, stack, dev_issuer, http):
    claims, form, status, error = CASES[case]
    resp = post_token(stack, mint(dev_issuer, **claims), http, **form)
    body = assert_oauth_error(resp, status, error)
    for value in SECRET_RULE_VALUES:
        assert value not in body["error_description"], f"{case}: the description reveals {value!r}"


def test_wrong_claims_name_the_claim_but_not_the_expected_value(stack, dev_issuer, http):
    body = assert_oauth_error(
        post_token(stack, mint(dev_issuer, repository_id="1"), http), 400, "invalid_request"
    )
    assert "repository_id" in body["error_description"]
    assert "100200300" not in body["error_description"]


def test_expired_subject_token(stack, dev_issuer, http):
    now = int(time.time())
    token = mint(dev_issuer, iat=now - 900, nbf=now - 900, exp=now - 600)
    body = assert_oauth_error(post_token(stack, token, http), 400, "invalid_request")
    assert "expired" in body["error_description"]


def test_unknown_issuer_causes_no_egress(stack, dev_issuer, http, counting_server, tmp_path):
    """An unconfigured `iss`, `jku` or `x5u` must not make the broker fetch anything."""
    from broker.dev.issuer import github_claims, mint_with

    stranger = generate_key(tmp_path / "stranger")  # claims to live at the counting server
    claims = github_claims(issuer=counting_server.url, audience="errand-e2e")
    token = mint_with(
        stranger,
        claims,
        headers={"jku": counting_server.url + "/jwks", "x5u": counting_server.url + "/cert"},
    )
    body = assert_oauth_error(post_token(stack, token, http), 400, "invalid_request")
    assert "issuer" in body["error_description"]
    # jku/x5u on a token from the configured issuer are ignored too.
    forged = mint(
        dev_issuer, _headers={"jku": counting_server.url + "/jwks", "kid": "attacker-kid"}
    )
    assert_oauth_error(post_token(stack, forged, http), 400, "invalid_request")
    time.sleep(0.2)
    assert counting_server.hits == []


def test_replayed_subject_token(stack, dev_issuer, http):
    token = mint(dev_issuer)
    assert post_token(stack, token, http).status_code == 200
    body = assert_oauth_error(post_token(stack, token, http), 400, "invalid_request")
    assert "already been used" in body["error_description"]


def test_token_for_another_audience(stack, dev_issuer, http):
    assert_oauth_error(
        post_token(stack, mint(dev_issuer, aud="some-other-service"), http), 400, "invalid_request"
    )


def test_forged_signature(stack, dev_issuer, http, tmp_path):
    from broker.dev.issuer import github_claims, mint_with

    imposter = generate_key(tmp_path / "imposter")
    claims = github_claims(issuer=dev_issuer.issuer, audience="errand-e2e")
    token = mint_with(imposter, claims, headers={"kid": dev_issuer.key.kid})
    assert_oauth_error(post_token(stack, token, http), 400, "invalid_request")


@pytest.mark.parametrize(
    "subject_token",
    ["garbage", "a.b.c", "e30.e30.", "x" * 20000, "eyJhbGciOiJub25lIn0.e30."],
    ids=["not-jwt", "bad-b64", "empty-sig", "huge", "alg-none"],
)
def test_malformed_subject_tokens(stack, http, subject_token):
    assert_oauth_error(post_token(stack, subject_token, http), 400, "invalid_request")


def test_malformed_requests(stack, dev_issuer, http):
    url = stack.url + "/token"
    token = mint(dev_issuer)
    assert_oauth_error(http.post(url, json=deploy_form(token), timeout=10), 400, "invalid_request")
    assert_oauth_error(
        http.post(url, data={"grant_type": "password"}, timeout=10), 400, "unsupported_grant_type"
    )
    assert_oauth_error(http.post(url, data={}, timeout=10), 400, "invalid_request")
    assert_oauth_error(
        http.post(url, data=deploy_form(token, subject_token_type="urn:x"), timeout=10),
        400,
        "invalid_request",
    )
    assert_oauth_error(
        http.post(url, data=deploy_form(token, requested_lifetime="-5"), timeout=10),
        400,
        "invalid_request",
    )
    assert_oauth_error(
        http.post(url, params={"subject_token": token}, data=deploy_form(token), timeout=10),
        400,
        "invalid_request",
    )
    assert_oauth_error(
        http.post(
            url,
            data=deploy_form(
                token, actor_token="x", actor_token_type=deploy_form(token)["subject_token_type"]
            ),
            timeout=10,
        ),
        400,
        "invalid_request",
    )
    assert_oauth_error(
        http.post(url, data=[("grant_type", "a"), ("grant_type", "b")], timeout=10),
        400,
        "invalid_request",
    )
    too_big = http.post(url, data={"x": "y" * (70 * 1024)}, timeout=10)
    assert_oauth_error(too_big, 413, "invalid_request")
    missing = http.get(stack.url + "/no-such-page", timeout=10)
    assert_oauth_error(missing, 404, "not_found")
    # None of these burned the subject token: it still exchanges.
    assert post_token(stack, token, http).status_code == 200


def test_unauthenticated_introspection_is_401(stack, dev_issuer, http):
    token = post_token(stack, mint(dev_issuer), http).json()["access_token"]
    resp = http.post(stack.url + "/introspect", data={"token": token}, timeout=10)
    body = assert_oauth_error(resp, 401, "invalid_client")
    assert "active" not in body
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    wrong = http.post(
        stack.url + "/introspect",
        data={"token": token},
        auth=(CLIENT_ID, "wrong-secret-0123456789"),
        timeout=10,
    )
    assert_oauth_error(wrong, 401, "invalid_client")
    unknown = http.post(
        stack.url + "/introspect",
        data={"token": token},
        auth=("nobody", stack.client_secret),
        timeout=10,
    )
    assert_oauth_error(unknown, 401, "invalid_client")
    assert introspect(stack, token, http).json()["active"] is True


@pytest.mark.parametrize("task_id", ["bad task/id", "-leading-dash", "x" * 200])
def test_malformed_task_id_is_invalid_request(stack, dev_issuer, http, task_id):
    token = mint(dev_issuer)
    body = assert_oauth_error(
        post_token(stack, token, http, task_id=task_id), 400, "invalid_request"
    )
    assert "task_id" in body["error_description"]


def test_denial_is_audited_specifically_without_the_token(stack, dev_issuer, http):
    """Short message, specific audit (docs/security-model.md): the caller gets a short
    reason; the audit gets the rule and values."""
    import secrets

    task = "task-e-" + secrets.token_hex(4)
    token = mint(dev_issuer, ref="refs/heads/evil")
    resp = http.post(
        stack.url + "/token",
        data=deploy_form(token, task_id=task),
        headers={"X-Request-Id": "req-e2e-denial-1"},
        timeout=10,
    )
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "refs/heads/main" not in body["error_description"]
    events = http.get(
        stack.url + "/admin/audit",
        params={"task": task},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    ).json()["events"]
    (event,) = events
    assert event["event"] == "token.exchange"
    assert event["outcome"] == "denied"
    assert event["reason"] == "no_matching_identity"
    assert event["issuer"] == "dev-ci"
    assert event["request_id"] == "req-e2e-denial-1"
    assert event["client_address"] == "127.0.0.1"
    assert "token_sha256" not in event and len(event["token_hmac"]) == 64
    assert event["details"]["compared"]["ref"] == {
        "expected": "refs/heads/main",
        "actual": "refs/heads/evil",
    }
    assert token not in json.dumps(events)
    # The signature segment alone must not be there either.
    assert token.rsplit(".", 1)[1] not in json.dumps(events)
