"""Operator endpoints under /admin, all behind the admin credential (a bearer token)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from flask import Blueprint, Response, current_app, request

from broker.domain.models import is_safe_id
from broker.domain.ports import StoreUnavailable
from broker.domain.revocation import revoke_grant
from broker.errors import InvalidRequest, TemporarilyUnavailable
from broker.http.client_auth import check_admin
from broker.http.context import request_id, services
from broker.http.responses import json_response

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _require_admin() -> None:
    check_admin(request, current_app.config.get("ERRAND_ADMIN_TOKEN_SHA256"))


def _safe_arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is not None and not is_safe_id(value):
        raise InvalidRequest(f"{name}: not a valid identifier", reason="bad_parameter")
    return value


def _limit() -> int:
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise InvalidRequest("limit: must be 1 to 10000", reason="bad_parameter")
    return int(raw)


@bp.get("/grants")
def list_grants() -> Response:
    svc = services()
    try:
        grants = svc.store.list_grants(
            now=int(svc.clock.now()),
            task_id=_safe_arg("task"),
            identity_id=_safe_arg("identity"),
            owner=_safe_arg("owner"),
            limit=_limit(),
        )
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
    return json_response({"grants": [asdict(g) for g in grants]})


@bp.get("/audit")
def audit() -> Response:
    svc = services()
    try:
        events = svc.store.audit_events(task_id=_safe_arg("task"), limit=_limit())
    except StoreUnavailable as err:
        raise TemporarilyUnavailable(debug=str(err)) from err
    return json_response({"events": events})


@bp.post("/grants/<jti>/revoke")
def revoke(jti: str) -> Response:
    if not is_safe_id(jti):
        raise InvalidRequest("jti: not a valid grant id", reason="bad_parameter")
    operator = "admin:" + hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()[:12]
    ended = revoke_grant(jti, services(), reason="operator", actor=operator, request_id=request_id())
    return json_response({"revoked": int(ended)})
