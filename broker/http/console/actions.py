"""The console's actions, each a POST behind the gate (session, origin, CSRF token):
revoke a task's or an identity's live grants, revoke-all behind a typed confirmation, and
approve or deny a pending approval as the approver the session signed in as.

They call the same domain functions as POST /admin/revoke and /admin/revoke-all, so each
takes a reason, is audited with who asked (the console session's label) and leaves a signed
revocation record; a redirect then shows the result (a reload does not post again)."""

from __future__ import annotations

from flask import redirect, request, url_for
from werkzeug.wrappers import Response

from broker.domain.approvals import decide_approval
from broker.domain.bulk_revocation import check_reason, revoke_all, revoke_by
from broker.domain.models import is_safe_id
from broker.errors import InvalidRequest
from broker.http.approvals import APPROVAL_ID
from broker.http.console import guard
from broker.http.console.blueprint import bp
from broker.http.console.views import CONFIRM_WORDS
from broker.http.context import services


def _actor() -> str:
    session = guard.current()
    assert session is not None  # the gate let no POST through without one
    return session.actor


def _checked_id(value: str, what: str) -> str:
    if not is_safe_id(value):
        raise InvalidRequest(f"{what}: not a valid identifier", reason="bad_parameter")
    return value


def _revoke(kind: str, value: str) -> int:
    """Revoke what `kind` names (domain revoke_by), for the signed-in operator, with the
    form's reason; how many grants went."""
    result = revoke_by(
        services(),
        kind=kind,
        value=_checked_id(value, kind),
        reason=request.form.get("reason", ""),
        actor=_actor(),
    )
    return result.revoked


@bp.post("/tasks/<task_id>/revoke")
def revoke_task(task_id: str) -> Response:
    revoked = _revoke("task", task_id)
    return redirect(url_for("console.task", task_id=task_id, revoked=revoked), code=303)


@bp.post("/identities/<identity_id>/revoke")
def revoke_identity(identity_id: str) -> Response:
    revoked = _revoke("identity", identity_id)
    return redirect(url_for("console.identities", identity=identity_id, revoked=revoked), code=303)


@bp.post("/revoke-all")
def revoke_everything() -> Response:
    """The incident switch. The typed word guards against a slip of the hand, not against an
    attacker (the session and the CSRF token do that): it must be the word the form showed."""
    reason = check_reason(request.form.get("reason", ""))  # before anything changes
    word, typed = request.form.get("word", ""), request.form.get("confirm", "").strip()
    if word not in CONFIRM_WORDS or typed != word:
        raise InvalidRequest(
            "type the word shown on the form to confirm revoke-all", reason="not_confirmed"
        )
    result = revoke_all(services(), reason=reason, actor=_actor())
    assert result.epoch is not None
    return redirect(
        url_for("console.revoke_all_status", epoch=result.epoch, revoked=result.revoked), code=303
    )


@bp.post("/approvals/<approval_id>/<verb>")
def decide(approval_id: str, verb: str) -> Response:
    """The approver is the identity the session signed in as, never a form field: the
    domain checks it is a listed human approver and not the requester, and wants a reason."""
    session = guard.current()
    assert session is not None  # the gate let no POST through without one
    if verb not in ("approve", "deny") or not APPROVAL_ID.fullmatch(approval_id):
        raise InvalidRequest("no such approval action", reason="bad_parameter")
    if not session.approver:
        raise InvalidRequest(
            "this console session has no approver identity: sign in again naming one",
            reason="not_an_approver",
        )
    decision = decide_approval(
        services(),
        approval_id,
        approve=verb == "approve",
        approver=session.approver,
        reason=request.form.get("reason", ""),  # required: the domain refuses an empty one
        actor=session.actor,
    )
    return redirect(url_for("console.approvals", decided=decision.state), code=303)
