"""GET /admin/tasks/{task_id}/proof: an ended task's signed proof that every token of it is
dead (docs/audit.md, "Task proofs"), behind the admin credential.

The answer carries the proof, the broker's issuer and the public key that signed it, so it
can be saved as it is (`errand audit proof TASK --out FILE`) and checked offline
(`errand audit verify-proof FILE`, against the broker's published keys with --jwks)."""

from __future__ import annotations

from typing import cast

from flask import Blueprint, Response, current_app, request

from broker.domain.models import is_safe_id
from broker.errors import InvalidRequest, NotFound
from broker.http.client_auth import check_admin
from broker.http.context import services
from broker.http.responses import json_response
from broker.runtime import Runtime
from broker.store.audit_proofs import RedisTaskProofs

bp = Blueprint("task_proof", __name__)


@bp.get("/admin/tasks/<task_id>/proof")
def proof_view(task_id: str) -> Response:
    check_admin(request, current_app.config.get("ERRAND_ADMIN_TOKEN_SHA256"))
    if not is_safe_id(task_id):
        raise InvalidRequest("not a valid task id", reason="bad_parameter")
    svc = cast(Runtime, services())
    proof = RedisTaskProofs(svc.redis).find(task_id)
    if proof is None:
        raise NotFound(
            "no proof for this task: it has not ended, its clean-up has not run yet, or its "
            "tombstone has expired",
            reason="proof_unknown",
        )
    return json_response(
        {
            "task": task_id,
            "issuer": svc.config.broker.issuer,
            "proof": proof.jws,
            "jwks": {"keys": [proof.public_jwk]},
        }
    )
