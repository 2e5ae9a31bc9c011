"""A tiny OIDC issuer for local development and tests: discovery + JWKS over HTTP on
127.0.0.1, and a mint() that signs GitHub-Actions-shaped ID tokens with a local key.

It exists so `make run` can show a real exchange on a machine with no CI system. Never
trust it in production: its key sits in .errand/ on the developer's disk."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.tokens.keyring import SigningKey, thumbprint


def load_or_create_key(path: Path) -> SigningKey:
    if path.exists():
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.write_bytes(pem)
        path.chmod(0o600)
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg="ES256", private_key=private)


def github_claims(
    *,
    issuer: str,
    audience: str,
    repository: str = "acme/app",
    repository_id: str = "100200300",
    owner_id: str = "4242",
    ref: str = "refs/heads/main",
    environment: str | None = None,
    lifetime: int = 300,
    now: float | None = None,
    immutable_sub: bool = False,
) -> dict[str, Any]:
    """Claims shaped like a GitHub Actions OIDC token (both `sub` forms)."""
    now = time.time() if now is None else now
    owner, _, repo = repository.partition("/")
    sub = (
        f"repo:{owner}@{owner_id}/{repo}@{repository_id}:ref:{ref}"
        if immutable_sub
        else f"repo:{repository}:ref:{ref}"
    )
    claims: dict[str, Any] = {
        "jti": secrets.token_hex(16),
        "sub": sub,
        "aud": audience,
        "ref": ref,
        "sha": secrets.token_hex(20),
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": owner_id,
        "run_id": str(secrets.randbelow(10**10)),
        "run_number": "7",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": repository_id,
        "actor_id": "12345",
        "actor": "octocat",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
        "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
        "runner_environment": "github-hosted",
        "iss": issuer,
        "nbf": int(now) - 5,
        "iat": int(now),
        "exp": int(now) + lifetime,
    }
    if environment:
        claims["environment"] = environment
    return claims


class DevIssuer:
    """Serves /.well-known/openid-configuration and /jwks on 127.0.0.1."""

    def __init__(self, key: SigningKey, port: int = 0, host: str = "127.0.0.1") -> None:
        self.key = key
        self.extra_keys: list[SigningKey] = []
        self.jwks_requests = 0
        issuer_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer_ref.issuer, "jwks_uri": issuer_ref.issuer + "/jwks"}
                elif self.path == "/jwks":
                    issuer_ref.jwks_requests += 1
                    body = issuer_ref.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in (self.key, *self.extra_keys)]}

    def start(self) -> DevIssuer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def mint(self, claims: dict[str, Any], *, headers: dict[str, Any] | None = None) -> str:
        return mint_with(self.key, claims, headers=headers)


def mint_with(
    key: SigningKey, claims: dict[str, Any], *, headers: dict[str, Any] | None = None
) -> str:
    hdr = {"kid": key.kid, "typ": "JWT", **(headers or {})}
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=hdr)
