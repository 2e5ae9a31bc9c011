"""Where keys come from: a SPIFFE bundle file, an agent's inline JWKS, and routing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.identity.errors import MalformedToken, UnknownIssuer
from broker.identity.jwks import parse_jwks
from broker.identity.verifier import route_issuer
from tests.support.forms import exchange_form
from tests.support.jws import new_es256_key
from tests.support.platforms import TRUST_DOMAIN, assertion, denied, ok, spiffe_bundle, svid


def test_bundle_rotation_on_disk_is_picked_up(
    wclient: Any, wkeys: Any, clock: Any, bundle_file: Path
) -> None:
    ok(wclient.post("/token", data=exchange_form(svid(wkeys.spiffe, clock.now()))))
    rotated = new_es256_key()
    bundle_file.write_text(json.dumps(spiffe_bundle(rotated)))
    clock.advance(61)  # past the refresh cooldown: an unknown kid may trigger a re-read
    ok(wclient.post("/token", data=exchange_form(svid(rotated, clock.now()))))


def test_unreadable_bundle_is_retryable(
    wclient: Any, wkeys: Any, clock: Any, bundle_file: Path
) -> None:
    bundle_file.unlink()
    resp = wclient.post("/token", data=exchange_form(svid(wkeys.spiffe, clock.now())))
    assert resp.status_code == 503 and resp.headers["Retry-After"]


def test_bundle_x509_entries_are_not_jwt_keys(wsvc: Any, wkeys: Any) -> None:
    issuer = wsvc.config.issuers["spiffe-prod"]
    jwk = wkeys.spiffe.public_jwk()
    jwk["use"] = "x509-svid"
    assert parse_jwks({"keys": [jwk]}, issuer) == {}
    jwk["use"] = "jwt-svid"
    assert len(parse_jwks({"keys": [jwk]}, issuer)) == 1
    # jwt-svid keys only count for SPIFFE issuers
    assert parse_jwks({"keys": [jwk]}, wsvc.config.issuers["github"]) == {}


def test_inline_agent_keys_touch_neither_redis_nor_http(
    wclient: Any, wsvc: Any, wkeys: Any, clock: Any
) -> None:
    fetcher = wsvc.verifier._jwks._fetcher
    token = assertion(wkeys.stranger, "agent-summariser", clock.now())  # unknown key
    denied(wclient.post("/token", data=exchange_form(token, task_id="t", purpose="p")))
    r = wsvc.redis
    assert not [k for k in r.scan_iter() if "agent" in k and "jwks" in k]
    assert fetcher.calls == []


def test_routing(wsvc: Any) -> None:
    config = wsvc.config
    assert (
        route_issuer(config, {"iss": "https://token.actions.githubusercontent.com"}).id == "github"
    )
    assert route_issuer(config, {"iss": "agent-summariser"}).id == "agent:agent-summariser"
    assert route_issuer(config, {"sub": f"spiffe://{TRUST_DOMAIN}/x"}).id == "spiffe-prod"
    with pytest.raises(UnknownIssuer):
        route_issuer(config, {"iss": "gh-deploy"})  # an identity without own keys is no issuer
    with pytest.raises(UnknownIssuer):
        route_issuer(config, {"sub": "spiffe://elsewhere.example/x"})
    with pytest.raises(MalformedToken):
        route_issuer(config, {"sub": "system:serviceaccount:a:b"})
    with pytest.raises(MalformedToken):
        route_issuer(config, {"iss": 12})
