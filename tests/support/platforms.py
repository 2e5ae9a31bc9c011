"""One issuer per platform (GitHub, GitLab, Kubernetes, SPIFFE, an SSO), identities of every
type, tokens shaped like the real ones, and helpers to read the broker's answers.

Keys are made at test time; nothing talks to a network (JWKS come from KeyedFetcher or a
bundle file in tmp_path)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import fakeredis
import jwt
import yaml

from broker.config import load_config
from broker.dev.issuer import github_claims, mint_with
from broker.domain.models import TrustedIssuer
from broker.reload import ConfigReloader
from broker.settings import Settings
from broker.store import keys as rkeys
from broker.tokens.keyring import SigningKey
from tests.support.builders import (
    BROKER_ISSUER,
    CLIENT_ID,
    CLIENT_SECRET,
    DENIAL_MAY_TOUCH,
    fake_services,
    make_app,
)
from tests.support.jws import new_es256_key
from tests.support.redis import stream_events

AUD = "errand-test"
TOKEN_ENDPOINT = BROKER_ISSUER + "/token"
DEPLOY = "https://deploy.acme.example"
STATUS = "https://status.acme.example"
BILLING = "https://billing.acme.example"
TICKETS = "https://tickets.acme.example"

GH_URL = "https://token.actions.githubusercontent.com"
GL_URL = "https://gitlab.example.com"
K8S_URL = "https://kubernetes.default.svc.cluster.local"
SSO_URL = "https://sso.acme.example"
TRUST_DOMAIN = "prod.acme.example"


class Keys:
    def __init__(self) -> None:
        self.github = new_es256_key()
        self.gitlab = new_es256_key()
        self.k8s = new_es256_key()
        self.spiffe = new_es256_key()
        self.spiffe_other = new_es256_key()  # another trust domain's key
        self.sso = new_es256_key()
        self.agent = new_es256_key()
        self.partner = new_es256_key()
        self.stranger = new_es256_key()


def jwks_of(*keys: SigningKey, use: str = "sig") -> dict[str, Any]:
    out = []
    for key in keys:
        jwk = key.public_jwk()
        jwk["use"] = use
        out.append(jwk)
    return {"keys": out}


def spiffe_bundle(key: SigningKey) -> dict[str, Any]:
    """A SPIFFE trust bundle: JWT-SVID keys marked use=jwt-svid, no alg (SPIRE's format)."""
    jwk = key.public_jwk()
    jwk.pop("alg", None)
    jwk["use"] = "jwt-svid"
    return {"keys": [jwk], "spiffe_sequence": 1, "spiffe_refresh_hint": 300}


class KeyedFetcher:
    """JWKS per issuer id (no HTTP); counts fetches."""

    def __init__(self, by_issuer: dict[str, dict[str, Any]]) -> None:
        self.by_issuer = by_issuer
        self.calls: list[str] = []

    def fetch(self, issuer: TrustedIssuer) -> dict[str, Any]:
        self.calls.append(issuer.id)
        return copy.deepcopy(self.by_issuer.get(issuer.id, {"keys": []}))


def world_config(keys: Keys, bundle_file: Path) -> dict[str, Any]:
    allow = {
        "audiences": [DEPLOY],
        "scopes": ["deploy:read", "deploy:write"],
        "default_scopes": ["deploy:read"],
    }
    return {
        "broker": {"issuer": BROKER_ISSUER, "max_token_ttl_seconds": 900},
        "issuers": [
            {
                "id": "github",
                "issuer": GH_URL,
                "audience": AUD,
                "profile": "github-actions",
                "algorithms": ["ES256"],
            },
            {
                "id": "gitlab",
                "issuer": GL_URL,
                "audience": AUD,
                "profile": "gitlab-ci",
                "algorithms": ["ES256"],
            },
            {
                "id": "k8s",
                "issuer": K8S_URL,
                "audience": AUD,
                "profile": "kubernetes",
                "algorithms": ["ES256"],
            },
            {
                "id": "spiffe-prod",
                "profile": "spiffe",
                "trust_domain": TRUST_DOMAIN,
                "jwks_file": str(bundle_file),
                "audience": AUD,
                "algorithms": ["ES256"],
            },
            {
                "id": "sso",
                "issuer": SSO_URL,
                "audience": AUD,
                "human": True,
                "algorithms": ["ES256"],
            },
        ],
        "identities": [
            {
                "id": "gh-deploy",
                "type": "service",
                "owner": "platform-team",
                "purpose": "deploy acme/app",
                "match": [
                    {
                        "issuer": "github",
                        "claims": {
                            "repository_id": "100200300",
                            "repository_owner_id": "4242",
                            "ref": "refs/heads/main",
                        },
                    }
                ],
                "allow": {**allow, "max_ttl_seconds": 600},
            },
            {
                "id": "gh-release",
                "type": "service",
                "owner": "release-team",
                "purpose": "release acme/app",
                "expires": "2099-01-01",
                "match": [
                    {
                        "issuer": "github",
                        "claims": {
                            "repository_id": "100200300",
                            "repository_owner_id": "4242",
                            "ref": "refs/heads/release/*",
                            "ref_protected": "true",
                        },
                    }
                ],
                "allow": {
                    "audiences": [DEPLOY],
                    "scopes": ["release:write"],
                    "default_scopes": ["release:write"],
                },
            },
            {
                "id": "gl-deploy",
                "type": "service",
                "owner": "platform-team",
                "purpose": "deploy group/app",
                "match": [
                    {
                        "issuer": "gitlab",
                        "claims": {
                            "project_id": "42",
                            "namespace_id": "7",
                            "ref": "main",
                            "ref_protected": "true",
                        },
                    }
                ],
                "allow": allow,
            },
            {
                "id": "k8s-billing",
                "type": "service",
                "owner": "billing-team",
                "purpose": "billing API",
                "match": [
                    {
                        "issuer": "k8s",
                        "claims": {"namespace": "billing", "service_account": "billing-api"},
                    }
                ],
                "allow": {
                    "audiences": [BILLING],
                    "scopes": ["billing:read"],
                    "default_scopes": ["billing:read"],
                },
            },
            {
                "id": "spiffe-orders",
                "type": "service",
                "owner": "orders-team",
                "purpose": "orders service",
                "match": [
                    {
                        "issuer": "spiffe-prod",
                        "claims": {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/ns/orders/sa/*"},
                    }
                ],
                "allow": {
                    "audiences": [BILLING],
                    "scopes": ["billing:read"],
                    "default_scopes": ["billing:read"],
                },
            },
            {
                "id": "agent-summariser",
                "type": "agent",
                "owner": "support-team",
                "purpose": "summarise support tickets",
                "keys": {"jwks": jwks_of(keys.agent)},
                "allow": {
                    "audiences": [TICKETS],
                    "scopes": ["tickets:read"],
                    "default_scopes": ["tickets:read"],
                    "max_ttl_seconds": 900,
                },
            },
            {
                "id": "partner-acme-logistics",
                "type": "partner",
                "owner": "partnerships",
                "purpose": "shipment status for Acme Logistics",
                "keys": {"jwks": jwks_of(keys.partner)},
                "allow": {
                    "audiences": [STATUS, DEPLOY],
                    "scopes": ["status:read"],
                    "default_scopes": ["status:read"],
                },
            },
            {
                "id": "alice",
                "type": "human",
                "owner": "security-team",
                "purpose": "break-glass operator",
                "match": [{"issuer": "sso", "claims": {"email": "alice@acme.example"}}],
                "allow": {
                    "audiences": [DEPLOY],
                    "scopes": ["deploy:read"],
                    "default_scopes": ["deploy:read"],
                },
            },
        ],
        "clients": [
            {
                "client_id": CLIENT_ID,
                "secret_sha256": hashlib.sha256(CLIENT_SECRET.encode()).hexdigest(),
            }
        ],
    }


def fetcher_for(keys: Keys) -> KeyedFetcher:
    return KeyedFetcher(
        {
            "github": jwks_of(keys.github),
            "gitlab": jwks_of(keys.gitlab),
            "k8s": jwks_of(keys.k8s),
            "sso": jwks_of(keys.sso),
        }
    )


# -- tokens shaped like the real ones ----------------------------------------------------------
def github_token(
    key: SigningKey, now: float, *, immutable_sub: bool = False, **overrides: Any
) -> str:
    claims = github_claims(issuer=GH_URL, audience=AUD, now=now, immutable_sub=immutable_sub)
    drop = overrides.pop("_drop", ())
    claims.update(overrides)
    for name in drop:
        claims.pop(name, None)
    return mint_with(key, claims)


def gitlab_claims(now: float, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "namespace_id": "7",
        "namespace_path": "group",
        "project_id": "42",
        "project_path": "group/app",
        "user_id": "3",
        "user_login": "dev",
        "user_email": "dev@example.com",
        "user_access_level": "maintainer",
        "user_identities": [{"provider": "github", "extern_uid": "2435223452345"}],
        "pipeline_id": "1212",
        "pipeline_source": "push",
        "job_id": "1212",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "groups_direct": ["group"],
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": secrets.token_hex(20),
        "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.example.com/group/app//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": secrets.token_hex(20),
        "jti": secrets.token_hex(16),
        "iss": GL_URL,
        "iat": int(now),
        "nbf": int(now) - 5,
        "exp": int(now) + 300,
        "sub": "project_path:group/app:ref_type:branch:ref:main",
        "aud": AUD,
    }
    claims.update(overrides)
    return claims


def gitlab_token(key: SigningKey, now: float, **overrides: Any) -> str:
    return mint_with(key, gitlab_claims(now, **overrides))


def k8s_claims(
    now: float, namespace: str = "billing", sa: str = "billing-api", **overrides: Any
) -> dict[str, Any]:
    """A projected service-account token (TokenRequest API, Kubernetes >= 1.30 shape)."""
    claims: dict[str, Any] = {
        "aud": [AUD],
        "exp": int(now) + 3600,
        "iat": int(now),
        "nbf": int(now),
        "iss": K8S_URL,
        "jti": secrets.token_hex(16),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-a", "uid": "646e7c5e-32d6-4d42-9dbd-e504e6cbe6b1"},
            "pod": {"name": "billing-api-7d4b9", "uid": "5e0bd49b-f040-43b0-99b7-22765a53f7f3"},
            "serviceaccount": {"name": sa, "uid": "14ee3fa4-a7e2-420f-9f9a-dbc4507c3798"},
            "warnafter": int(now) + 3000,
        },
        "sub": f"system:serviceaccount:{namespace}:{sa}",
    }
    claims.update(overrides)
    return claims


def k8s_token(key: SigningKey, now: float, **kw: Any) -> str:
    return mint_with(key, k8s_claims(now, **kw))


def svid(
    key: SigningKey,
    now: float,
    spiffe_id: str = f"spiffe://{TRUST_DOMAIN}/ns/orders/sa/api",
    **overrides: Any,
) -> str:
    """A JWT-SVID as SPIRE issues it: no iss (no jwt_issuer configured), no jti."""
    claims: dict[str, Any] = {
        "sub": spiffe_id,
        "aud": [AUD],
        "exp": int(now) + 300,
        "iat": int(now),
    }
    claims.update(overrides)
    drop = claims.pop("_drop", ())
    for name in drop:
        claims.pop(name, None)
    return jwt.encode(
        claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"}
    )


def assertion(key: SigningKey, identity_id: str, now: float, **overrides: Any) -> str:
    """An agent's own RFC 7523 style assertion: iss = sub = identity, aud = token endpoint."""
    claims: dict[str, Any] = {
        "iss": identity_id,
        "sub": identity_id,
        "aud": TOKEN_ENDPOINT,
        "iat": int(now),
        "exp": int(now) + 120,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(overrides)
    drop = claims.pop("_drop", ())
    for name in drop:
        claims.pop(name, None)
    return jwt.encode(
        claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"}
    )


def sso_token(
    key: SigningKey, now: float, email: str = "alice@acme.example", **overrides: Any
) -> str:
    claims: dict[str, Any] = {
        "iss": SSO_URL,
        "sub": "00u1abcd",
        "email": email,
        "aud": AUD,
        "iat": int(now),
        "exp": int(now) + 300,
        "jti": secrets.token_hex(8),
    }
    claims.update(overrides)
    return mint_with(key, claims)


def dump(doc: Any) -> str:
    return json.dumps(doc)


# -- reading the broker's answers --------------------------------------------------------------
def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.get_json()
    return dict(resp.get_json())


def denied(resp: Any, error: str = "invalid_request") -> str:
    """The description of a 400 with `error` and no-store."""
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["error"] == error, body
    assert resp.headers["Cache-Control"] == "no-store"
    return str(body["error_description"])


def introspect_body(client: Any, token: str) -> dict[str, Any]:
    return dict(
        client.post(
            "/introspect", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET)
        ).get_json()
    )


def last_denial(svc: Any) -> dict[str, Any]:
    return [e for e in stream_events(svc) if e.get("outcome") == "denied"][-1]


def state_keys(svc: Any) -> dict[str, Any]:
    """Every Redis key except the audit stream and the JWKS mirror/lock, with its type."""
    r = svc.redis
    return {
        k: r.type(k)
        for k in r.scan_iter()
        if k != rkeys.AUDIT_STREAM and not k.startswith(DENIAL_MAY_TOUCH)
    }


# -- a configuration file that reloads ---------------------------------------------------------
class ReloadingBroker:
    """The broker app reading its configuration from a file the test rewrites (`write()`),
    with the periodic reload check run on demand (`tick()`)."""

    def __init__(self, path: Path, raw: dict[str, Any], svc: Any, client: Any) -> None:
        self.path, self.raw, self.svc, self.client = path, raw, svc, client

    @classmethod
    def start(
        cls,
        tmp_path: Path,
        raw: dict[str, Any],
        *,
        key_dir: Path,
        clock: Any,
        fetcher: Any,
        server: fakeredis.FakeServer | None = None,
    ) -> ReloadingBroker:
        """Write `raw` to tmp_path/errand.yaml and serve it on fakeredis (`server`, or a new
        one; kept in svc.server so a second process can share it)."""
        path = tmp_path / "errand.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        server = server or fakeredis.FakeServer()
        svc = fake_services(load_config(path), key_dir, clock=clock, fetcher=fetcher, server=server)
        svc.server = server
        svc.settings = Settings(config_path=path, redis_url="redis://fake", signing_key_dir=key_dir)
        client = make_app(svc, tmp_path, config_path=path).test_client()
        return cls(path, raw, svc, client)

    @property
    def reloader(self) -> ConfigReloader:
        reloader = self.svc.reloader
        assert isinstance(reloader, ConfigReloader)
        return reloader

    def write(self, doc: Any, *, text: str | None = None) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        st = self.path.stat()
        os.replace(tmp, self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a visible change

    def tick(self) -> Any:
        """Let the periodic check run at the next request."""
        self.reloader._next_check = 0.0
        return self.client.get("/healthz")
