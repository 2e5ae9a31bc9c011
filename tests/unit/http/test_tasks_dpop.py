"""The task endpoints with a DPoP-bound token (RFC 9449 §7.1): the token is the caller's
credential only with the DPoP scheme and a proof of its key for this very request. Bearer,
no proof, the thief's own key, a proof for another request and a replayed proof are all
refused before the task is read or moved; the holder's proof works as Bearer does for an
unbound token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.domain.task_completion import complete_task
from broker.errors import DpopTokenRefused
from tests.support.builders import BROKER_ISSUER, UNIT_ISSUER, fake_services, make_app, make_config
from tests.support.dpop import DpopKey
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error, introspect
from tests.support.redis import stream_events

TOKEN_URL = BROKER_ISSUER + "/token"
# (method, path) of every endpoint that takes a token of the task as the caller's credential.
ENDPOINTS = [
    ("POST", "/tasks/complete"),
    ("GET", "/tasks/{task}"),
    *[("POST", "/tasks/{task}/" + a) for a in ("suspend", "resume", "complete", "fail", "cancel")],
]


@pytest.fixture
def key(clock) -> DpopKey:
    return DpopKey.generate(clock=clock.now)


def bound(client: Any, subject: Any, key: DpopKey, task: str) -> str:
    resp = client.post(
        "/token",
        data=deploy_form(subject(), task_id=task),
        headers={"DPoP": key.proof("POST", TOKEN_URL)},
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["token_type"] == "DPoP"
    return str(resp.get_json()["access_token"])


def call(client: Any, method: str, path: str, headers: Any) -> Any:
    return client.open(path, method=method, headers=headers)


def signed(key: DpopKey, token: str, method: str, path: str, **kw: Any) -> dict[str, str]:
    return key.headers(token, method, BROKER_ISSUER + path, **kw)


def assert_dpop_refusal(resp: Any, error: str) -> None:
    assert_oauth_error(resp, 401, error)
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith(f'DPoP error="{error}"'), challenge
    assert 'algs="ES256' in challenge


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_a_bound_token_as_bearer_or_without_its_key_is_refused(
    client, subject, key, svc, method, path
) -> None:
    task = "bound-" + path.rsplit("/", 1)[-1].strip("{}")
    token = bound(client, subject, key, task)
    url = path.format(task=task)
    thief = DpopKey.generate(clock=key.clock)
    assert_dpop_refusal(
        call(client, method, url, {"Authorization": f"Bearer {token}"}), "invalid_token"
    )
    assert_dpop_refusal(
        call(client, method, url, {"Authorization": f"DPoP {token}"}), "invalid_dpop_proof"
    )
    assert_dpop_refusal(
        call(client, method, url, signed(thief, token, method, url)), "invalid_dpop_proof"
    )
    # Nothing moved: the task is running and the token active.
    assert introspect(client, token).get_json()["active"] is True
    assert not [e for e in stream_events(svc) if e.get("task") == task and "task." in e["event"]]


def test_the_holders_proof_moves_and_shows_the_task(client, subject, key) -> None:
    token = bound(client, subject, key, "held")
    for method, path, state in (
        ("POST", "/tasks/held/suspend", "suspended"),
        ("GET", "/tasks/held", "suspended"),
        ("POST", "/tasks/held/resume", "running"),
    ):
        resp = call(client, method, path, signed(key, token, method, path))
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["state"] == state
    done = call(client, "POST", "/tasks/complete", signed(key, token, "POST", "/tasks/complete"))
    assert done.get_json() == {"task_id": "held", "completed": True}
    assert introspect(client, token).get_json()["active"] is False


def test_a_replayed_or_misdirected_proof_is_refused(client, subject, key) -> None:
    token = bound(client, subject, key, "replayed")
    headers = signed(key, token, "GET", "/tasks/replayed")
    assert call(client, "GET", "/tasks/replayed", headers).status_code == 200
    assert_dpop_refusal(call(client, "GET", "/tasks/replayed", headers), "invalid_dpop_proof")
    # A proof for the read cannot cancel; one for another path or without ath neither.
    for proof_headers in (
        signed(key, token, "GET", "/tasks/replayed/cancel"),
        signed(key, token, "POST", "/tasks/replayed/suspend"),
        {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", BROKER_ISSUER + "/x")},
        {
            "Authorization": f"DPoP {token}",
            "DPoP": key.proof("POST", BROKER_ISSUER + "/tasks/replayed/cancel"),
        },
    ):
        resp = call(client, "POST", "/tasks/replayed/cancel", proof_headers)
        assert_dpop_refusal(resp, "invalid_dpop_proof")
    two = signed(key, token, "POST", "/tasks/replayed/cancel")
    both = [*two.items(), ("DPoP", key.proof("POST", BROKER_ISSUER + "/tasks/replayed/cancel"))]
    assert_dpop_refusal(call(client, "POST", "/tasks/replayed/cancel", both), "invalid_dpop_proof")


def test_a_stale_proof_is_refused(client, subject, key, clock) -> None:
    token = bound(client, subject, key, "stale")
    headers = signed(key, token, "GET", "/tasks/stale")
    clock.advance(120)
    assert_dpop_refusal(call(client, "GET", "/tasks/stale", headers), "invalid_dpop_proof")


def test_unbound_tokens_stay_bearer(client, issued) -> None:
    token = issued(task_id="plain")["access_token"]
    assert client.get("/tasks/plain", headers={"Authorization": f"Bearer {token}"}).status_code == (
        200
    )
    # The DPoP scheme with an unbound token: nothing to prove, a Bearer challenge.
    key = DpopKey.generate()
    resp = call(client, "GET", "/tasks/plain", signed(key, token, "GET", "/tasks/plain"))
    assert_oauth_error(resp, 401, "invalid_token")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_domain_reads_a_bare_token_as_bearer(client, subject, key, svc) -> None:
    token = bound(client, subject, key, "bare")
    with pytest.raises(DpopTokenRefused):
        complete_task(token, svc)
    assert introspect(client, token).get_json()["active"] is True


def test_nonces_at_the_task_endpoints(
    key_dir: Path, clock, fetcher, tmp_path: Path, subject, key
) -> None:
    secret = tmp_path / "nonce.key"
    secret.write_text("n" * 40)

    def with_nonces(raw: dict[str, Any]) -> None:
        raw["dpop"] = {"require_nonce": True, "nonce_secret_file": str(secret)}

    config = make_config(UNIT_ISSUER, mutate=with_nonces)
    client = make_app(
        fake_services(config, key_dir, clock=clock, fetcher=fetcher), tmp_path
    ).test_client()
    first = client.post(
        "/token", data=deploy_form(subject()), headers={"DPoP": key.proof("POST", TOKEN_URL)}
    )
    nonce = first.headers["DPoP-Nonce"]
    resp = client.post(
        "/token",
        data=deploy_form(subject(), task_id="nonced"),
        headers={"DPoP": key.proof("POST", TOKEN_URL, nonce=nonce)},
    )
    token = resp.get_json()["access_token"]
    path = "/tasks/nonced"
    # The key has no nonce remembered for the broker: the endpoint asks for one (§9).
    without = call(client, "GET", path, signed(key, token, "GET", path))
    assert_dpop_refusal(without, "use_dpop_nonce")
    key.remember_nonce(BROKER_ISSUER, without.headers["DPoP-Nonce"])
    ok = call(client, "GET", path, signed(key, token, "GET", path))
    assert ok.status_code == 200, ok.get_json()
