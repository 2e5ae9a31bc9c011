"""POST /token with a DPoP proof (RFC 9449 §5, §6, §8): bound tokens, refused proofs, the
inventory's require_dpop, nonces, metadata and introspection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from broker.config.parse import ConfigError
from broker.domain.models import IdentityTypeRules
from tests.support.builders import BROKER_ISSUER, UNIT_ISSUER, fake_services, make_app, make_config
from tests.support.dpop import DpopKey, make_key, raw_proof
from tests.support.forms import bearer_form, deploy_form
from tests.support.http import assert_oauth_error, introspect
from tests.support.redis import grant_state_keys, redis_keys, stream_events

TOKEN_URL = BROKER_ISSUER + "/token"
STATUS_AUD = "https://status.acme.example"


def _with_dpop(raw: dict[str, Any]) -> None:
    raw["dpop"] = {"required_audiences": [STATUS_AUD]}


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(UNIT_ISSUER, mutate=_with_dpop)


@pytest.fixture
def key(clock) -> DpopKey:
    return DpopKey.generate(clock=clock.now)


def post(client: Any, form: dict[str, Any], *proofs: str) -> Any:
    headers = [("DPoP", p) for p in proofs]
    return client.post("/token", data=form, headers=headers)


def test_metadata_advertises_asymmetric_dpop_algorithms(client) -> None:
    algs = client.get("/.well-known/oauth-authorization-server").get_json()[
        "dpop_signing_alg_values_supported"
    ]
    assert "ES256" in algs and "EdDSA" in algs
    assert not [a for a in algs if a.startswith("HS") or a == "none"]


def test_dpop_exchange_binds_the_token_to_the_key(client, subject, key, svc) -> None:
    resp = post(client, deploy_form(subject()), key.proof("POST", TOKEN_URL))
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["token_type"] == "DPoP"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key.jkt}
    info = introspect(client, body["access_token"]).get_json()
    assert info["active"] is True
    assert info["token_type"] == "DPoP"
    assert info["cnf"] == {"jkt": key.jkt}
    issued = [e for e in stream_events(svc) if e.get("outcome") == "issued"]
    assert issued[-1]["dpop_jkt"] == key.jkt
    assert "DPoP-Nonce" not in resp.headers  # nonces are off


def test_jwt_bearer_grant_takes_dpop_too(client, subject, key) -> None:
    form = bearer_form(subject(), audience="https://deploy.acme.example", scope="deploy:read")
    resp = post(client, form, key.proof("POST", TOKEN_URL))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["token_type"] == "DPoP"


def test_without_a_proof_the_token_is_bearer_without_cnf(client, subject) -> None:
    body = post(client, deploy_form(subject())).get_json()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in jwt.decode(body["access_token"], options={"verify_signature": False})
    assert "cnf" not in introspect(client, body["access_token"]).get_json()


def test_a_replayed_proof_is_refused_and_writes_nothing(client, subject, key, svc) -> None:
    proof = key.proof("POST", TOKEN_URL)
    assert post(client, deploy_form(subject()), proof).status_code == 200
    before = grant_state_keys(svc)
    resp = post(client, deploy_form(subject()), proof)
    assert_oauth_error(resp, 400, "invalid_dpop_proof")
    assert grant_state_keys(svc) == before
    denied = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert denied[-1]["reason"] == "dpop_replayed"


@pytest.mark.parametrize(
    ("htm", "htu", "reason"),
    [
        ("GET", TOKEN_URL, "dpop_bad_htm"),
        ("POST", BROKER_ISSUER + "/introspect", "dpop_bad_htu"),
        ("POST", "https://elsewhere.example/token", "dpop_bad_htu"),
    ],
)
def test_a_proof_for_another_request_is_refused_and_spends_nothing(
    client, subject, svc, clock, htm: str, htu: str, reason: str
) -> None:
    token = subject()
    bad = raw_proof(make_key(), htm=htm, htu=htu, iat=clock.now())
    resp = post(client, deploy_form(token), bad)
    assert_oauth_error(resp, 400, "invalid_dpop_proof")
    assert [e for e in stream_events(svc) if e.get("outcome") == "denied"][-1]["reason"] == reason
    assert not redis_keys(svc, "errand:dpop:*") and not grant_state_keys(svc)
    # The subject token was not spent: the same request with a good proof succeeds.
    good = DpopKey.generate(clock=clock.now).proof("POST", TOKEN_URL)
    assert post(client, deploy_form(token), good).status_code == 200


def test_exactly_one_dpop_header(client, subject, key) -> None:
    resp = post(
        client, deploy_form(subject()), key.proof("POST", TOKEN_URL), key.proof("POST", TOKEN_URL)
    )
    assert_oauth_error(resp, 400, "invalid_dpop_proof")


def test_a_stale_proof_is_refused(client, subject, key, clock) -> None:
    proof = key.proof("POST", TOKEN_URL)
    clock.advance(70)
    assert_oauth_error(post(client, deploy_form(subject()), proof), 400, "invalid_dpop_proof")


def test_required_audience_needs_a_proof(client, subject, key) -> None:
    form = deploy_form(subject(), audience=STATUS_AUD, scope="deploy:read")
    body = assert_oauth_error(post(client, form), 400, "invalid_dpop_proof")
    assert "required" in body["error_description"]
    form = deploy_form(subject(), audience=STATUS_AUD, scope="deploy:read")
    assert post(client, form, key.proof("POST", TOKEN_URL)).get_json()["token_type"] == "DPoP"


def test_required_per_identity_type(
    key_dir: Path, clock, fetcher, tmp_path: Path, subject, key
) -> None:
    def require_for_services(raw: dict[str, Any]) -> None:
        raw["identity_types"] = {"service": {"require_dpop": True}}

    config = make_config(UNIT_ISSUER, mutate=require_for_services)
    assert config.type_rules("service") == IdentityTypeRules(
        default_ttl_seconds=None, max_ttl_seconds=3600, require_dpop=True
    )
    client = make_app(
        fake_services(config, key_dir, clock=clock, fetcher=fetcher), tmp_path
    ).test_client()
    assert_oauth_error(post(client, deploy_form(subject())), 400, "invalid_dpop_proof")
    assert post(client, deploy_form(subject()), key.proof("POST", TOKEN_URL)).status_code == 200


def test_nonces_when_required(key_dir: Path, clock, fetcher, tmp_path: Path, subject, key) -> None:
    secret = tmp_path / "nonce.key"
    secret.write_text("n" * 40)

    def with_nonces(raw: dict[str, Any]) -> None:
        raw["dpop"] = {"require_nonce": True, "nonce_secret_file": str(secret)}

    config = make_config(UNIT_ISSUER, mutate=with_nonces)
    client = make_app(
        fake_services(config, key_dir, clock=clock, fetcher=fetcher), tmp_path
    ).test_client()
    token = subject()
    first = post(client, deploy_form(token), key.proof("POST", TOKEN_URL))
    assert_oauth_error(first, 400, "use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    ok = post(client, deploy_form(token), key.proof("POST", TOKEN_URL, nonce=nonce))
    assert ok.status_code == 200, ok.get_json()  # the subject token was not spent by the 400
    assert ok.headers["DPoP-Nonce"]  # RFC 9449 §8.2: a fresh nonce on every answer
    clock.advance(301)  # the previous window's nonce is still good
    assert (
        post(client, deploy_form(subject()), key.proof("POST", TOKEN_URL, nonce=nonce)).status_code
        == 200
    )
    clock.advance(300)  # two windows later it is not
    stale = post(client, deploy_form(subject()), key.proof("POST", TOKEN_URL, nonce=nonce))
    assert_oauth_error(stale, 400, "use_dpop_nonce")
    assert stale.headers["DPoP-Nonce"] != nonce
    forged = post(
        client,
        deploy_form(subject()),
        key.proof("POST", TOKEN_URL, nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    )
    assert_oauth_error(forged, 400, "use_dpop_nonce")


def test_nonces_need_a_secret() -> None:
    def no_secret(raw: dict[str, Any]) -> None:
        raw["dpop"] = {"require_nonce": True}

    with pytest.raises(ConfigError, match="nonce_secret_file"):
        make_config(UNIT_ISSUER, mutate=no_secret)
