"""GET /.well-known/oauth-authorization-server (RFC 8414) and /.well-known/jwks.json."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from broker.domain.models import GRANT_TYPE_JWT_BEARER, GRANT_TYPE_TOKEN_EXCHANGE
from broker.http.context import services
from errand_jose import ASYMMETRIC_ALGORITHMS

bp = Blueprint("wellknown", __name__)


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    svc = services()
    base = svc.config.broker.issuer.rstrip("/")
    resp = jsonify(
        {
            "issuer": svc.config.broker.issuer,
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "introspection_endpoint": f"{base}/introspect",
            "revocation_endpoint": f"{base}/revoke",
            "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_JWT_BEARER],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
            ],
            "subject_token_types_supported": [
                "urn:ietf:params:oauth:token-type:jwt",
                "urn:ietf:params:oauth:token-type:id_token",
                # an Errand access token, as the subject of a delegation (with actor_token)
                "urn:ietf:params:oauth:token-type:access_token",
            ],
            "subject_token_signing_alg_values_supported": list(ASYMMETRIC_ALGORITHMS),
            "access_token_signing_alg_values_supported": [svc.keyring.active.alg],
            "task_completion_endpoint": f"{base}/tasks/complete",
            # RFC 9449 §5.1: asymmetric algorithms only
            "dpop_signing_alg_values_supported": list(svc.config.dpop.algorithms),
        }
    )
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    resp = jsonify(services().keyring.jwks())
    # Short: verifiers must see a rotation soon, and an emergency removal sooner.
    resp.headers["Cache-Control"] = "public, max-age=60"
    return resp


@bp.get("/evidence/keys")
def evidence_keys() -> Response:
    """Public keys that signed revocation records, retired ones included, so an auditor can
    verify a record long after its key stopped signing tokens (compromised keys excluded)."""
    return jsonify(services().keyring.all_public_keys())
