"""Announcing a new approval to the approvers' tooling (config `policy.approval_webhook`):
a worker job (workers/approval_webhook.py) POSTs a JSON body to the configured URL, signed
with HMAC-SHA256, after the exchange has already answered `authorization_pending`.

It never blocks or fails an exchange: the exchange only enqueues the job, and a failure to
enqueue is audited and logged; the job makes one attempt with the configured timeout and
audits what happened (`approval.notify`: delivered, or failed with why). A person can always
list pending approvals (`errand approvals list`, the console); the webhook is a nudge.

The receiver checks

    X-Errand-Signature: sha256=<hex HMAC-SHA256(secret, "<X-Errand-Timestamp>.<body>")>

in constant time and refuses a timestamp too far from its clock (a replay). The body names
the approval, never a token: id, identity, owner, task, audiences, scopes, purpose, the
policies that asked for a person, and when it expires."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from broker.domain.ports import Approval, Services

log = logging.getLogger(__name__)
EVENT = "approval.notify"


def webhook_url_problem(url: str) -> str:
    """Why `url` cannot be the webhook ('' when it can): https, or http to a loopback host
    (a local relay, and the tests); no credentials in it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "not a URL"
    if not host:
        return "not an absolute URL"
    if parts.username or parts.password:
        return "must not carry credentials (the body is signed instead)"
    if parts.scheme == "https":
        return ""
    if parts.scheme == "http" and _loopback(host):
        return ""
    return "must be https (plain http only to a loopback host)"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def body_of(approval: Approval) -> bytes:
    return json.dumps(
        {
            "event": "approval.requested",
            "approval_id": approval.id,
            "identity": approval.identity_id,
            "owner": approval.owner,
            "task_id": approval.task_id,
            "audiences": list(approval.audiences),
            "scopes": list(approval.scopes),
            "purpose": approval.purpose,
            "policies": list(approval.policies),
            "created_at": approval.created_at,
            "expires_at": approval.expires_at,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def announce(svc: Services, approval: Approval) -> None:
    """Enqueue the notice of a new approval; never raises (the exchange must answer)."""
    if svc.config.policy_options.approval_webhook is None:
        return
    try:
        svc.jobs.schedule_approval_notice(approval.id)
    except Exception as err:  # the caller is told authorization_pending regardless
        log.warning("could not enqueue the approval notice: %s", type(err).__name__)
        _audit(svc, approval.id, "error", "enqueue_failed")


@dataclass(frozen=True)
class Delivery:
    """What the HTTP post answered: a status code, or the error that stopped it."""

    status: int = 0
    error: str = ""


def deliver(svc: Services, approval_id: str, post: Any) -> dict[str, Any]:
    """The worker's job: one signed POST with the configured timeout, audited.
    `post(url, body, headers, timeout) -> Delivery` does the HTTP (workers/approval_webhook.py)."""
    hook = svc.config.policy_options.approval_webhook
    approval = svc.approvals.get(approval_id) if svc.approvals is not None else None
    if hook is None or approval is None:
        return {"delivered": False, "why": "no webhook" if hook is None else "no approval"}
    if approval.state != "pending":
        return {"delivered": False, "why": f"already {approval.state}"}
    body = body_of(approval)
    now = int(svc.clock.now())
    headers = {
        "Content-Type": "application/json",
        "X-Errand-Timestamp": str(now),
        "X-Errand-Signature": signature(hook.secret, now, body),
        "X-Errand-Event": "approval.requested",
    }
    result: Delivery = post(hook.url, body, headers, hook.timeout_seconds)
    if result.error or not 200 <= result.status < 300:
        why = result.error or f"http_{result.status}"
        _audit(svc, approval_id, "failed", why)
        return {"delivered": False, "why": why}
    _audit(svc, approval_id, "delivered", "", status=result.status)
    return {"delivered": True, "status": result.status}


def _audit(svc: Services, approval_id: str, outcome: str, reason: str, **fields: Any) -> None:
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": EVENT,
            "outcome": outcome,
            "reason": reason or None,
            "approval_id": approval_id,
            **fields,
        }
    )
