"""Approvals of high-impact requests under /admin/approvals, behind the admin credential.

An approver acts through the operator surface (the CLI, the console): the body names the
approver's identity, which must be a human identity in `policy.approvers` and never the
identity that asked (broker/domain/approvals.py). The admin credential's holder is recorded
as the actor next to the approver."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, current_app, request

from broker.domain.approvals import decide_approval, list_pending, show_approval
from broker.domain.ports import Approval
from broker.errors import InvalidRequest
from broker.http.client_auth import check_admin, operator_label
from broker.http.context import services
from broker.http.responses import json_response

APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{16,43}")
bp = Blueprint("approvals", __name__, url_prefix="/admin/approvals")


@bp.before_request
def _require_admin() -> None:
    check_admin(request, current_app.config.get("ERRAND_ADMIN_TOKEN_SHA256"))


def _view(approval: Approval) -> dict[str, Any]:
    return asdict(approval)


def _checked(approval_id: str) -> str:
    if not APPROVAL_ID.fullmatch(approval_id):
        raise InvalidRequest("approval_id: not a valid approval id", reason="bad_parameter")
    return approval_id


@bp.get("")
def pending() -> Response:
    return json_response({"approvals": [_view(a) for a in list_pending(services())]})


@bp.get("/<approval_id>")
def show(approval_id: str) -> Response:
    return json_response(_view(show_approval(services(), _checked(approval_id))))


def _decide(approval_id: str, approve: bool) -> Response:
    data = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(data, dict):
        raise InvalidRequest("send a JSON object or a form", reason="bad_body")
    approver, reason = data.get("approver"), data.get("reason")
    if not isinstance(approver, str) or not approver:
        raise InvalidRequest("approver: name the approving identity", reason="bad_parameter")
    approval = decide_approval(
        services(),
        _checked(approval_id),
        approve=approve,
        approver=approver[:128],
        reason=reason if isinstance(reason, str) else "",
        actor=operator_label(request),
    )
    return json_response(_view(approval))


@bp.post("/<approval_id>/approve")
def approve(approval_id: str) -> Response:
    return _decide(approval_id, True)


@bp.post("/<approval_id>/deny")
def deny(approval_id: str) -> Response:
    return _decide(approval_id, False)
