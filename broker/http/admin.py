"""Operator endpoints under /admin, all behind the admin credential (a bearer token)."""

from __future__ import annotations

import re
from dataclasses import asdict

from flask import Blueprint, Response, current_app, request

from broker.domain.bulk_revocation import check_reason, revoke_all, revoke_by
from broker.domain.models import is_safe_id
from broker.domain.token_revocation import revoke_grant
from broker.errors import InvalidRequest, TemporarilyUnavailable
from broker.http.audit_admin import parse_time, search_filters
from broker.http.client_auth import check_admin, operator_label
from broker.http.context import request_id, services
from broker.http.responses import json_response

JTI = re.compile(r"[A-Za-z0-9_-]{8,64}")  # our jtis are base64url: they may start with - or _
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
    identity, owner = _safe_arg("identity"), _safe_arg("owner")
    identity_ids: list[str] | None = None
    if identity:
        identity_ids = [identity]
    elif owner:  # an owner's grants are its identities' grants
        identity_ids = [i.id for i in svc.config.identities if i.owner == owner]
    grants = svc.store.list_grants(
        now=int(svc.clock.now()),
        task_id=_safe_arg("task"),
        identity_ids=identity_ids,
        limit=_limit(),
    )
    return json_response({"grants": [asdict(g) for g in grants]})


@bp.get("/audit")
def audit() -> Response:
    """Search: task, identity, owner, outcome, reason, event, actor (exact), since/until
    (docs/audit.md, "Searching"). Newest first."""
    events = services().store.audit_events(
        task_id=_safe_arg("task"),
        limit=_limit(),
        where=search_filters(),
        since=parse_time("since"),
        until=parse_time("until"),
    )
    return json_response({"events": events})


def _body() -> dict[str, str]:
    data = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(data, dict):
        raise InvalidRequest("send a JSON object or a form", reason="bad_body")
    return {
        k: (str(v).lower() if isinstance(v, bool) else v)
        for k, v in data.items()
        if isinstance(v, str | bool)
    }


@bp.post("/grants/<jti>/revoke")
def revoke(jti: str) -> Response:
    if not JTI.fullmatch(jti):
        raise InvalidRequest("jti: not a valid grant id", reason="bad_parameter")
    ended = revoke_grant(
        jti, services(), reason="operator", actor=operator_label(request), request_id=request_id()
    )
    return json_response({"revoked": int(ended)})


@bp.post("/revoke")
def revoke_bulk() -> Response:
    """Revoke by task, identity, owner, identity_type or issuer: {kind, value, reason}."""
    body = _body()
    kind, value = body.get("kind", ""), body.get("value", "")
    if not is_safe_id(value):
        raise InvalidRequest("value: not a valid identifier", reason="bad_parameter")
    result = revoke_by(
        services(),
        kind=kind,
        value=value,
        reason=body.get("reason", ""),
        actor=operator_label(request),
    )
    return json_response(
        {
            "kind": result.kind,
            "value": result.value,
            "revoked": result.revoked,
            "record_id": result.record_id,
            "record": result.record,
        }
    )


ROTATION_UNSUPPORTED = (
    "key rotation needs keys in Redis (set ERRAND_KEY_ENCRYPTION_KEY_FILE); "
    "with ERRAND_SIGNING_KEY_DIR, replace the key files instead"
)


def _rotate(emergency: bool) -> dict[str, object]:
    keyring = services().rotating_keys
    if keyring is None:
        raise InvalidRequest(ROTATION_UNSUPPORTED, reason="rotation_unsupported")
    try:
        result: dict[str, object] = keyring.rotate(emergency=emergency)
    except Exception as err:  # Redis down while rotating
        raise TemporarilyUnavailable(debug=type(err).__name__) from err
    services().audit.record(
        {
            "ts": services().clock.now(),
            "event": "keys.rotated",
            "actor": operator_label(request),
            **result,
        },
        required=True,
    )
    return result


@bp.post("/revoke-all")
def revoke_everything() -> Response:
    """The incident switch: every live grant ends at once; clean-up follows in the background.
    With rotate_key=true the signing key is also replaced and leaves the JWKS at once."""
    body = _body()
    reason = check_reason(body.get("reason", ""))  # before anything changes
    rotate = str(body.get("rotate_key", "")).lower() in ("1", "true", "yes")
    rotation = _rotate(emergency=True) if rotate else None
    result = revoke_all(services(), reason=reason, actor=operator_label(request))
    return json_response(
        {
            "epoch": result.epoch,
            "revoked": result.revoked,
            "record_id": result.record_id,
            "record": result.record,
            "key_rotation": rotation,
        }
    )


@bp.get("/keys")
def key_status() -> Response:
    svc = services()
    if svc.rotating_keys is not None:
        return json_response({"source": "redis", "keys": svc.rotating_keys.status()})
    keyring = svc.keyring
    return json_response(
        {
            "source": "files",
            "keys": [{"kid": k["kid"], "alg": k["alg"]} for k in keyring.jwks()["keys"]],
            "active": keyring.active.kid,
        }
    )


@bp.post("/keys/rotate")
def rotate_keys() -> Response:
    body = _body()
    emergency = str(body.get("emergency", "")).lower() in ("1", "true", "yes")
    return json_response(_rotate(emergency))


@bp.get("/revoke-all/<int:epoch>")
def fanout_status(epoch: int) -> Response:
    progress = services().revocations.fanout_progress(epoch)
    return json_response({"epoch": epoch, "progress": progress})


@bp.get("/evidence")
def evidence() -> Response:
    records = services().revocations.list_evidence(_limit())
    return json_response({"records": records})
