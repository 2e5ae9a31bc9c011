"""Flagging an identity that keeps reaching for more than it was given.

Denials of a verified identity's own requests (scope escalation, audiences it never had, a
completed or foreign task, its live-grant quota) are counted; at a threshold per limits window
the identity is flagged (an `identity.flagged` audit event, which broker/metrics.py also
counts) and, if `broker.limits.auto_suspend` is set, suspended. Nothing anyone else can cause
counts: introspection of a token whose task completed is audited, never counted (whoever holds
a dead token could otherwise get its identity suspended)."""

from __future__ import annotations

import logging

from broker.domain.inventory import suspend_identity
from broker.domain.ports import Services, StoreUnavailable

log = logging.getLogger(__name__)

# Denial reasons that say "this identity is reaching for more than it was given".
SUSPICIOUS_REASONS = frozenset(
    {
        "audience_not_allowed",
        "scope_not_allowed",
        "task_completed",
        "task_foreign",
        "quota_exceeded",
    }
)


def note_denial(svc: Services, identity_id: str | None, reason: str, request_id: str) -> None:
    """Count a suspicious denial of a verified identity; flag (and maybe suspend) it."""
    if not identity_id or reason not in SUSPICIOUS_REASONS:
        return
    opts = svc.config.broker.limits
    try:
        count, _ = svc.limiter.hit("denials", identity_id, window_seconds=opts.window_seconds)
    except StoreUnavailable:
        return
    if count != opts.denials_before_flag:
        return  # flag once per window, at the threshold
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": "identity.flagged",
            "identity": identity_id,
            "outcome": "flagged",
            "reason": reason,
            "denials": count,
            "window_seconds": opts.window_seconds,
            "auto_suspend": opts.auto_suspend,
            "request_id": request_id,
        }
    )
    if not opts.auto_suspend:
        return
    try:
        suspend_identity(
            svc,
            identity_id,
            actor="errand:abuse-detector",
            reason=f"{count} suspicious denials in {opts.window_seconds} s (last: {reason})",
        )
    except Exception as err:  # the flag stands; an operator follows up
        log.error("auto-suspension of %s failed: %s", identity_id, type(err).__name__)
