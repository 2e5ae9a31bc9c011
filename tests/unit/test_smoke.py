from __future__ import annotations

from tests.support.builders import CLIENT_ID, CLIENT_SECRET, UNIT_ISSUER, gha_token
from tests.support.forms import deploy_form


def test_exchange_then_introspect(client, issuer_key, clock):
    token = gha_token(issuer_key, UNIT_ISSUER, now=clock.now())
    resp = client.post("/token", data=deploy_form(token))
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    intro = client.post(
        "/introspect", data={"token": body["access_token"]}, auth=(CLIENT_ID, CLIENT_SECRET)
    )
    assert intro.json["active"] is True
    assert intro.json["task_id"] == body["task_id"]
