"""Exchange -> introspect active -> revoke -> introspect inactive, and the published
metadata (RFC 8414) and JWKS that let a resource server verify the token offline."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from tests.support.stack import CLIENT_ID, DEPLOY_AUD, introspect, mint, post_token

pytestmark = pytest.mark.e2e


def _header(token: str) -> dict[str, object]:
    segment = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def test_exchange_introspect_revoke(stack, dev_issuer, http):
    resp = post_token(stack, mint(dev_issuer), http, task_id="story-a", purpose="deploy build 7")
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["expires_in"] == 300
    assert body["scope"] == "deploy:write"
    assert body["task_id"] == "story-a"
    token = body["access_token"]

    active = introspect(stack, token, http)
    assert active.status_code == 200
    assert active.headers["Cache-Control"] == "no-store"
    info = active.json()
    assert info["active"] is True
    assert info["iss"] == stack.url
    assert info["sub"] == "acme-app-deploy"
    assert info["aud"] == DEPLOY_AUD
    assert info["scope"] == "deploy:write"
    assert info["task_id"] == "story-a"
    assert info["token_type"] == "Bearer"
    assert info["exp"] - info["iat"] == 300

    # RFC 7009: the holder revokes without client authentication; 200 with an empty body.
    revoked = http.post(
        stack.url + "/revoke", data={"token": token, "token_type_hint": "access_token"}, timeout=10
    )
    assert revoked.status_code == 200
    assert revoked.json() == {}

    gone = introspect(stack, token, http)
    assert gone.status_code == 200
    assert gone.json() == {"active": False}  # RFC 7662 §2.2: nothing else about it

    # Revoking again, or revoking junk, is the same answer: no probing.
    assert http.post(stack.url + "/revoke", data={"token": token}, timeout=10).json() == {}
    assert (
        http.post(stack.url + "/revoke", data={"token": "not-a-token"}, timeout=10).status_code
        == 200
    )


def test_introspection_accepts_client_secret_post(stack, dev_issuer, http):
    token = post_token(stack, mint(dev_issuer), http).json()["access_token"]
    resp = http.post(
        stack.url + "/introspect",
        data={"token": token, "client_id": CLIENT_ID, "client_secret": stack.client_secret},
        timeout=10,
    )
    assert resp.status_code == 200
    assert resp.json()["active"] is True


def test_metadata_and_jwks_verify_the_token_offline(stack, dev_issuer, http):
    meta = http.get(stack.url + "/.well-known/oauth-authorization-server", timeout=10)
    assert meta.status_code == 200
    doc = meta.json()
    assert doc["issuer"] == stack.url
    assert doc["token_endpoint"] == stack.url + "/token"
    assert doc["jwks_uri"] == stack.url + "/.well-known/jwks.json"
    assert doc["introspection_endpoint"] == stack.url + "/introspect"
    assert doc["revocation_endpoint"] == stack.url + "/revoke"
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in doc["grant_types_supported"]

    jwks = http.get(doc["jwks_uri"], timeout=10)
    assert jwks.status_code == 200
    keys = jwks.json()["keys"]
    assert keys, "the JWKS publishes no key"
    for key in keys:
        assert key.get("kid")
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key), "private material published"
    assert stack.kid in {k["kid"] for k in keys}

    token = post_token(stack, mint(dev_issuer), http, task_id="story-a-offline").json()[
        "access_token"
    ]
    header = _header(token)
    assert header["typ"] == "at+jwt"  # RFC 9068 §2.1
    assert header["alg"] == "ES256"
    published = {k["kid"]: k for k in keys}
    assert header["kid"] in published

    # A resource server verifies offline: the published key, the published issuer.
    signing_key = jwt.PyJWK(published[str(header["kid"])])
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=[signing_key.algorithm_name],
        audience=DEPLOY_AUD,
        issuer=doc["issuer"],
        options={"require": ["exp", "iat", "jti", "sub"]},
    )
    assert claims["sub"] == "acme-app-deploy"
    assert claims["task_id"] == "story-a-offline"
    assert claims["scope"] == "deploy:write"
    assert claims["client_id"] == "acme-app-deploy"

    # A token with a flipped signature byte does not verify against the JWKS.
    head, body, sig = token.split(".")
    tampered = ".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, signing_key.key, algorithms=["ES256"], audience=DEPLOY_AUD)
    assert introspect(stack, tampered, http).json() == {"active": False}


def test_health_endpoints(stack, http):
    assert http.get(stack.url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = http.get(stack.url + "/readyz", timeout=10).json()
    assert ready["status"] == "ready"
    assert ready["signing_kid"] == stack.kid
