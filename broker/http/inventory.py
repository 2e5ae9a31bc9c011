"""Operator endpoints for the identity inventory, under /admin/identities, behind the same
admin credential as /admin (broker/http/client_auth.check_admin).

    GET  /admin/identities                     the effective inventory with each state
    GET  /admin/identities/review              the access review (?dormant_days=90&expiring_days=30)
    POST /admin/identities/<id>/suspend        stop issuance, revoke live grants   {"reason": ...}
    POST /admin/identities/<id>/unsuspend      reinstate a suspended identity
    POST /admin/identities/<id>/offboard       suspend for good, drop from the inventory
    GET  /admin/identities/reload              the configuration reload status of this process
    POST /admin/identities/reload              check the configuration file now (this process)

The blueprint also runs the configuration reload check before every request (broker/reload.py)."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from broker.domain.access_review import access_review
from broker.domain.inventory import offboard_identity, suspend_identity, unsuspend_identity
from broker.domain.models import is_safe_id
from broker.errors import InvalidRequest, NotFound
from broker.http.client_auth import check_admin, operator_label
from broker.http.context import request_id, services
from broker.http.process import runtime
from broker.http.responses import json_response
from broker.reload import install_reloader
from broker.runtime import Reloader

bp = Blueprint("identities", __name__, url_prefix="/admin/identities")
log = logging.getLogger("errand.inventory")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    process = state.app.extensions.get("errand")
    if process is not None:
        for warning in process.config.warnings:
            log.warning("configuration: %s", warning)
        install_reloader(process)


@bp.before_app_request
def _check_configuration() -> None:
    reloader = runtime().reloader
    if reloader is not None:
        reloader.maybe_reload()


@bp.before_request
def _require_admin() -> None:
    check_admin(request, current_app.config.get("ERRAND_ADMIN_TOKEN_SHA256"))


def _reason() -> str:
    data: Any = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest("send a JSON object or a form", reason="bad_body")
    reason = data.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 512 or _CONTROL.search(reason):
        raise InvalidRequest("reason: at most 512 printable characters", reason="bad_parameter")
    return reason


def _identity_id(identity_id: str) -> str:
    if not is_safe_id(identity_id):
        raise NotFound("no such identity in the inventory", reason="unknown_identity")
    return identity_id


def _int_arg(name: str, default: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= high:
        raise InvalidRequest(f"{name}: must be 0 to {high}", reason="bad_parameter")
    return int(raw)


@bp.get("")
def list_identities() -> Response:
    svc = services()
    states = svc.inventory.identity_states()
    rows = []
    for identity in svc.config.identities:
        state = (states.get(identity.id) or {}).get("state", "active")
        rows.append(
            {
                "id": identity.id,
                "type": identity.type,
                "owner": identity.owner,
                "purpose": identity.purpose,
                "expires": identity.expires.isoformat() if identity.expires else None,
                "state": state,
            }
        )
    return json_response({"identities": [r for r in rows if r["state"] != "offboarded"]})


@bp.get("/review")
def review() -> Response:
    report = access_review(
        services(),
        dormant_days=_int_arg("dormant_days", 90, 36500),
        expiring_days=_int_arg("expiring_days", 30, 3650),
        include_offboarded=request.args.get("include_offboarded") in ("1", "true"),
    )
    return json_response(report)


# One handler per lifecycle action: suspend, unsuspend, offboard.
_ACTIONS = {
    "suspend": suspend_identity,
    "unsuspend": unsuspend_identity,
    "offboard": offboard_identity,
}


@bp.post("/<identity_id>/<any(suspend, unsuspend, offboard):action>")
def change_state(identity_id: str, action: str) -> Response:
    result = _ACTIONS[action](
        services(),
        _identity_id(identity_id),
        actor=operator_label(request),
        reason=_reason(),
        request_id=request_id(),
    )
    return json_response(result)


def _reloader() -> Reloader:
    reloader = runtime().reloader
    if reloader is None:
        raise NotFound(
            "this process did not load its configuration from a file", reason="no_reloader"
        )
    return reloader


@bp.get("/reload")
def reload_status() -> Response:
    return json_response(dict(_reloader().status))


@bp.post("/reload")
def reload_now() -> Response:
    # 200 either way: the body's "ok" says whether the file was applied or refused.
    return json_response(_reloader().reload_now())
