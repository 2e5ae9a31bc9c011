"""End to end: every caller type against a real gunicorn + worker, over HTTP only.

Local issuers mint tokens shaped like the real ones: GitHub Actions (both `sub` forms), GitLab
CI and a Kubernetes cluster (each a dev OIDC issuer on 127.0.0.1 with discovery and JWKS), a
SPIFFE trust domain (a bundle file, SVIDs without `iss` or `jti`) and an agent with its own key.
Then the inventory's lifecycle: suspension, the access review (CLI), a reload without restart
that a bad file does not undo, and offboarding."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from broker.dev.issuer import DevIssuer, github_claims, load_or_create_key
from broker.tokens.keyring import SigningKey
from tests.support.forms import bearer_form, exchange_form
from tests.support.platforms import (
    assertion,
    gitlab_claims,
    jwks_of,
    k8s_claims,
    spiffe_bundle,
    svid,
)
from tests.support.redis import RedisDbs
from tests.support.stack import CLIENT_ID, ROOT, Stack

pytestmark = pytest.mark.e2e

AUD = "errand-e2e-identities"
DEPLOY = "https://deploy.acme.example"
BILLING = "https://billing.acme.example"
TICKETS = "https://tickets.acme.example"
TRUST_DOMAIN = "prod.acme.example"

HTTP = requests.Session()
HTTP.trust_env = False  # 127.0.0.1 only


class PlatformStack:
    """The stack trusting one issuer per platform, with a token minter for each."""

    def __init__(
        self,
        stack: Stack,
        github: DevIssuer,
        gitlab: DevIssuer,
        k8s: DevIssuer,
        spiffe_key: SigningKey,
        agent_key: SigningKey,
        doc: dict[str, Any],
    ) -> None:
        self.stack, self.github, self.gitlab, self.k8s = stack, github, gitlab, k8s
        self.spiffe_key, self.agent_key, self.doc = spiffe_key, agent_key, doc

    # tokens ---------------------------------------------------------------------------------
    def gh(self, **overrides: Any) -> str:
        immutable = overrides.pop("immutable_sub", False)
        claims = github_claims(issuer=self.github.issuer, audience=AUD, immutable_sub=immutable)
        claims.update(overrides)
        return self.github.mint(claims)

    def gl(self, **overrides: Any) -> str:
        return self.gitlab.mint(
            gitlab_claims(time.time(), iss=self.gitlab.issuer, aud=AUD, **overrides)
        )

    def pod(self, **kw: Any) -> str:
        return self.k8s.mint(k8s_claims(time.time(), iss=self.k8s.issuer, aud=[AUD], **kw))

    def svid(self, key: SigningKey | None = None, **kw: Any) -> str:
        return svid(key or self.spiffe_key, time.time(), aud=[AUD], **kw)

    def agent(self, **kw: Any) -> str:
        kw.setdefault("aud", self.stack.url + "/token")
        return assertion(self.agent_key, "ticket-summariser", time.time(), **kw)

    # HTTP -----------------------------------------------------------------------------------
    def exchange(self, token: str, **extra: Any) -> requests.Response:
        return HTTP.post(self.stack.url + "/token", data=exchange_form(token, **extra), timeout=10)

    def bearer(self, token: str, **extra: Any) -> requests.Response:
        return HTTP.post(self.stack.url + "/token", data=bearer_form(token, **extra), timeout=10)

    def introspect(self, token: str) -> dict[str, Any]:
        resp = HTTP.post(
            self.stack.url + "/introspect",
            data={"token": token},
            auth=(CLIENT_ID, self.stack.client_secret),
            timeout=10,
        )
        return dict(resp.json())

    def admin(
        self, method: str, path: str, headers_extra: dict[str, str] | None = None, **kw: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.stack.admin_token}", "X-Errand-Operator": "e2e"}
        headers.update(headers_extra or {})
        return HTTP.request(method, self.stack.url + path, headers=headers, timeout=30, **kw)

    def write_config(self, doc: dict[str, Any] | None = None, *, text: str | None = None) -> None:
        path = self.stack.config_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(path)


def ok(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def refused(resp: requests.Response, error: str = "invalid_request") -> str:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == error, body
    assert resp.headers["Cache-Control"] == "no-store"
    return str(body["error_description"])


def config_doc(
    stack: Stack, github: str, gitlab: str, k8s: str, bundle: Path, agent_key: SigningKey
) -> dict[str, Any]:
    allow = {
        "audiences": [DEPLOY],
        "scopes": ["deploy:read", "deploy:write"],
        "default_scopes": ["deploy:read"],
    }
    return {
        "broker": {"issuer": stack.url, "config_reload_seconds": 1},
        "issuers": [
            {
                "id": "github",
                "profile": "github-actions",
                "issuer": github,
                "audience": AUD,
                "algorithms": ["ES256"],
                "refresh_cooldown_seconds": 5,
            },
            {
                "id": "gitlab",
                "profile": "gitlab-ci",
                "issuer": gitlab,
                "audience": AUD,
                "algorithms": ["ES256"],
                "refresh_cooldown_seconds": 5,
            },
            {
                "id": "cluster",
                "profile": "kubernetes",
                "issuer": k8s,
                "audience": AUD,
                "algorithms": ["ES256"],
                "refresh_cooldown_seconds": 5,
            },
            {
                "id": "spiffe-prod",
                "profile": "spiffe",
                "trust_domain": TRUST_DOMAIN,
                "jwks_file": str(bundle),
                "audience": AUD,
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
                "allow": allow,
            },
            {
                "id": "gh-release",
                "type": "service",
                "owner": "release-team",
                "purpose": "release acme/app",
                "expires": "2099-12-31",
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
                "id": "gh-legacy",
                "type": "service",
                "owner": "legacy-team",
                "purpose": "retired pipeline",
                "expires": "2020-01-01",
                "match": [
                    {
                        "issuer": "github",
                        "claims": {
                            "repository_id": "100200300",
                            "repository_owner_id": "4242",
                            "ref": "refs/heads/legacy",
                        },
                    }
                ],
                "allow": allow,
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
                "id": "billing-api",
                "type": "service",
                "owner": "billing-team",
                "purpose": "billing API",
                "match": [
                    {
                        "issuer": "cluster",
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
                "id": "orders",
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
                "id": "ticket-summariser",
                "type": "agent",
                "owner": "support-team",
                "purpose": "summarise support tickets",
                "keys": {"jwks": jwks_of(agent_key)},
                "allow": {
                    "audiences": [TICKETS],
                    "scopes": ["tickets:read"],
                    "default_scopes": ["tickets:read"],
                },
            },
        ],
        "clients": [{"client_id": CLIENT_ID, "secret_file": str(stack.secret_file)}],
    }


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: DevIssuer
) -> Iterator[PlatformStack]:
    url = redis_dbs.url("e2e-identities")
    workdir = tmp_path_factory.mktemp("identities")
    gitlab = DevIssuer(load_or_create_key(workdir / "gitlab.pem")).start()
    k8s = DevIssuer(load_or_create_key(workdir / "k8s.pem")).start()
    spiffe_key = load_or_create_key(workdir / "spire.pem")
    agent_key = load_or_create_key(workdir / "agent.pem")
    bundle = workdir / "prod.bundle.json"
    bundle.write_text(json.dumps(spiffe_bundle(spiffe_key)))
    stack = Stack(workdir / "stack", url, dev_issuer.issuer)
    doc = config_doc(stack, dev_issuer.issuer, gitlab.issuer, k8s.issuer, bundle, agent_key)
    stack.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    stack.start()
    try:
        yield PlatformStack(stack, dev_issuer, gitlab, k8s, spiffe_key, agent_key, doc)
    finally:
        stack.stop()
        gitlab.stop()
        k8s.stop()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(url).flushdb()


def test_github_actions_both_sub_forms_and_denials(world: PlatformStack) -> None:
    for immutable in (False, True):
        body = ok(
            world.exchange(world.gh(immutable_sub=immutable), audience=DEPLOY, scope="deploy:write")
        )
        assert world.introspect(body["access_token"])["sub"] == "gh-deploy"
    assert (
        ok(world.exchange(world.gh(ref="refs/heads/release/3.0"), audience=DEPLOY))["scope"]
        == "release:write"
    )
    # a recycled name: same repository and owner names, new ids
    message = refused(
        world.exchange(
            world.gh(repository_id="555000111", repository_owner_id="98765"), audience=DEPLOY
        )
    )
    assert "'repository_id'" in message and "100200300" not in message
    refused(world.exchange(world.gh(repository="acme/other", repository_id="999"), audience=DEPLOY))
    refused(
        world.exchange(
            world.gh(ref="refs/heads/release/3.0", ref_protected="false"), audience=DEPLOY
        )
    )
    refused(world.exchange(world.gh(ref="refs/heads/release/3.0/evil"), audience=DEPLOY))
    token = world.gh()
    ok(world.exchange(token, audience=DEPLOY))
    assert "already been used" in refused(world.exchange(token, audience=DEPLOY))


def test_expired_identity_is_refused(world: PlatformStack) -> None:
    assert "expired" in refused(world.exchange(world.gh(ref="refs/heads/legacy"), audience=DEPLOY))


def test_gitlab_ci(world: PlatformStack) -> None:
    assert (
        world.introspect(ok(world.exchange(world.gl(), audience=DEPLOY))["access_token"])["sub"]
        == "gl-deploy"
    )
    assert "'ref_protected'" in refused(
        world.exchange(world.gl(ref_protected="false"), audience=DEPLOY)
    )


def test_kubernetes_pod_binding_is_audited(world: PlatformStack) -> None:
    token = world.pod()
    body = ok(world.exchange(token, task_id="k8s-task-1"))
    ok(world.exchange(token, task_id="k8s-task-2"))  # the kubelet re-serves the same token
    assert world.introspect(body["access_token"])["aud"] == BILLING
    assert "'namespace'" in refused(world.exchange(world.pod(namespace="payments")))
    events = world.admin("GET", "/admin/audit", params={"task": "k8s-task-1"}).json()["events"]
    issued = next(e for e in events if e.get("outcome") == "issued")
    assert issued["workload"]["kubernetes"]["pod"]["name"] == "billing-api-7d4b9"
    assert issued["workload"]["kubernetes"]["node"]["name"] == "node-a"


def test_spiffe_svids(world: PlatformStack) -> None:
    token = world.svid()
    ok(world.exchange(token))
    ok(world.exchange(token))  # no jti; SPIRE re-serves cached SVIDs
    other = load_or_create_key(world.stack.workdir / "other-domain.pem")
    message = refused(
        world.exchange(
            world.svid(other, spiffe_id="spiffe://staging.acme.example/ns/orders/sa/api")
        )
    )
    assert "trust domain is not trusted" in message
    refused(world.exchange(world.svid(spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/payments/sa/api")))


def test_agent_with_its_own_key(world: PlatformStack) -> None:
    body = ok(world.exchange(world.agent(), task_id="digest-1", purpose="summarise P1 tickets"))
    info = world.introspect(body["access_token"])
    assert info["sub"] == "ticket-summariser" and info["task_id"] == "digest-1"
    assert "task_id: required for agent identities" in refused(
        world.exchange(world.agent(), purpose="x")
    )
    replayed = world.agent()
    ok(world.bearer(replayed, task_id="digest-2", purpose="p"))
    assert "already been used" in refused(
        world.bearer(replayed, task_id="digest-3", purpose="p"), "invalid_grant"
    )
    refused(world.exchange(world.agent(aud=world.stack.url), task_id="t", purpose="p"))


def test_one_token_through_both_grants(world: PlatformStack) -> None:
    body = ok(world.bearer(world.gh(), audience=DEPLOY))
    assert world.introspect(body["access_token"])["active"]
    token = world.gh()
    ok(world.exchange(token, audience=DEPLOY))
    assert refused(world.bearer(token, audience=DEPLOY), "invalid_grant").startswith("assertion:")


def review(world: PlatformStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The access review through the CLI (`errand review`)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            *args,
            "--url",
            world.stack.url,
            "--admin-token-file",
            str(world.stack.admin_token_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_suspend_review_and_offboard(world: PlatformStack) -> None:
    live = ok(world.exchange(world.gl(), audience=DEPLOY))
    resp = world.admin(
        "POST", "/admin/identities/gl-deploy/suspend", json={"reason": "runner compromised"}
    )
    body = resp.json()
    assert (
        body["state"] == "suspended" and body["revoked"] >= 1
    )  # (test_gitlab_ci's may be live too)
    assert world.introspect(live["access_token"]) == {"active": False}
    assert "suspended" in refused(world.exchange(world.gl(), audience=DEPLOY))

    out = review(world, "review", "--json", "--dormant-days", "30")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)["identities"]}
    assert rows["gl-deploy"]["state"] == "suspended" and rows["gl-deploy"]["live_grants"] == 0
    assert rows["gh-deploy"]["last_exchange"] and rows["gh-deploy"]["live_grants"] >= 1
    assert "expired" in rows["gh-legacy"]["flags"] and "never_used" in rows["gh-legacy"]["flags"]
    assert rows["ticket-summariser"]["own_keys"] and rows["ticket-summariser"]["purpose"]
    table = review(world, "review")
    assert table.returncode == 0 and "gl-deploy" in table.stdout and "suspended" in table.stdout

    assert world.admin("POST", "/admin/identities/gl-deploy/unsuspend").json()["state"] == "active"
    ok(world.exchange(world.gl(), audience=DEPLOY))

    assert review(world, "identity", "offboard", "gl-deploy").returncode == 2  # needs --yes
    out = review(
        world, "identity", "offboard", "gl-deploy", "--yes", "--reason", "project archived"
    )
    assert out.returncode == 0 and "offboarded, 1 live grant(s) revoked" in out.stdout
    assert "offboarded" in refused(world.exchange(world.gl(), audience=DEPLOY))
    assert world.admin("POST", "/admin/identities/gl-deploy/unsuspend").status_code == 400
    report = world.admin("GET", "/admin/identities/review").json()
    assert "gl-deploy" not in {r["id"] for r in report["identities"]}
    assert report["offboarded"][0]["id"] == "gl-deploy"
    assert report["offboarded"][0]["actor"].startswith("admin:")


def _until(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def every_worker(world: PlatformStack, predicate: Any, workers: int = 2) -> bool:
    """Each gunicorn worker reloads on its own: wait until all of them report `predicate`."""
    seen: dict[int, bool] = {}

    def check() -> bool:
        # A new connection each time: a kept-alive one would always reach the same worker.
        status = world.admin(
            "GET", "/admin/identities/reload", headers_extra={"Connection": "close"}
        ).json()
        seen[status["pid"]] = bool(predicate(status))
        return len(seen) >= workers and all(seen.values())

    return _until(check, timeout=20.0)


def test_reload_without_restart_and_a_bad_file_keeps_the_old(world: PlatformStack) -> None:
    doc = json.loads(json.dumps(world.doc))
    doc["identities"].append(
        {
            "id": "gh-docs",
            "type": "service",
            "owner": "docs-team",
            "purpose": "publish docs",
            "match": [
                {
                    "issuer": "github",
                    "claims": {
                        "repository_id": "777",
                        "repository_owner_id": "4242",
                        "ref": "refs/heads/main",
                    },
                }
            ],
            "allow": {
                "audiences": [DEPLOY],
                "scopes": ["deploy:read"],
                "default_scopes": ["deploy:read"],
            },
        }
    )
    before = world.admin("GET", "/admin/identities/reload").json()["generation"]
    assert refused(
        world.exchange(world.gh(repository="acme/docs", repository_id="777"), audience=DEPLOY)
    )
    world.write_config(doc)
    assert every_worker(
        world, lambda s: s["ok"] and s["identities"] == 8 and s["generation"] > before
    )

    def docs_ok() -> bool:
        token = world.gh(repository="acme/docs", repository_id="777")
        return world.exchange(token, audience=DEPLOY).status_code == 200

    assert all(docs_ok() for _ in range(6))
    world.write_config(text="broker: [this is not yaml")
    assert every_worker(world, lambda s: not s["ok"] and "not valid YAML" in s["error"])
    assert all(docs_ok() for _ in range(6))  # every worker keeps the running configuration
    assert world.stack.alive("web")
    world.write_config(doc)  # fixed again
    assert every_worker(world, lambda s: s["ok"] and s["identities"] == 8)
