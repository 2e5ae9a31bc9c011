"""A test world with one issuer per platform, tokens shaped like the real ones, and helpers.

Keys are made at test time; nothing talks to a network (JWKS come from KeyedFetcher or a
bundle file in tmp_path)."""

from __future__ import annotations

import copy
import json
import secrets
from pathlib import Path
from typing import Any

import jwt

from broker.devissuer import github_claims, mint_with
from broker.domain.models import TrustedIssuer
from broker.tokens.keyring import SigningKey
from tests.fixtures.builders import BROKER_ISSUER, CLIENT_ID, CLIENT_SECRET

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

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def new_es256_key() -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    from broker.tokens.keyring import thumbprint

    private = ec.generate_private_key(ec.SECP256R1())
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg="ES256", private_key=private)


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
    import hashlib

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


def exchange_form(token: str, **extra: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": JWT_TYPE,
    }
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def bearer_form(token: str, **extra: Any) -> dict[str, Any]:
    form: dict[str, Any] = {"grant_type": JWT_BEARER, "assertion": token}
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def dump(doc: Any) -> str:
    return json.dumps(doc)
