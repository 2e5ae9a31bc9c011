"""Abuse limits on the token endpoint: rates, a live-grant quota, and flagging of
identities that keep being denied.

- Per client address, before anything is parsed.
- Per configured issuer, from the unverified `iss`, before the signature check: a flood of
  forged tokens for one issuer is slowed without touching any identity's budget.
- Per verified identity, after the token is verified and matched: never keyed by a claimed
  identity, so nobody can lock a victim out by sending garbage in its name (SECURITY.md §1).
- A quota of live grants per identity, enforced inside the atomic grant write.
- Failed client and admin authentications per client address: past the limit the address
  is refused (429) before any credential is compared, and at most one failure per address
  per second reaches the audit stream (every failure is logged and counted).
- Denials of a verified identity's own requests (scope escalation, audiences it never had, a
  completed or foreign task) are counted; past a threshold the identity is flagged (audit
  event and metric) and, if configured, suspended. Nothing anyone else can cause counts:
  introspection of a token whose task completed is audited, never counted (whoever holds a
  dead token could otherwise get its identity suspended)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from broker.domain.models import LimitOptions
from broker.domain.ports import Services, StoreUnavailable
from broker.errors import TooManyRequests

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


# Failed client or admin authentications per client address per limits window (a fixed
# number: nobody mistypes a secret ten times a minute; a guesser needs far more).
AUTH_FAILURES_PER_ADDRESS = 10
AUTH_AUDIT_GATE_SECONDS = 1  # at most one stream event per address per this many seconds


def options(svc: Services) -> LimitOptions:
    found = getattr(svc.config.broker, "limits", None)
    return found if isinstance(found, LimitOptions) else LimitOptions()


def _refuse(limit: int, window: int, reset: int, scope: str, what: str) -> TooManyRequests:
    return TooManyRequests(
        f"too many requests for this {what}; retry later",
        retry_after=reset,
        reason="rate_limited",
        details={"limit": limit, "window_seconds": window, "scope": scope},
    )


def check_before_signature(svc: Services, address: str, issuer_id: str | None) -> None:
    """One round trip before any key fetch or signature work: the client address and the
    configured issuer the unverified token names. Never a claimed identity."""
    limiter = getattr(svc, "limits", None)
    opts = options(svc)
    counters: list[tuple[str, str, int, str]] = []
    if opts.per_address > 0:
        counters.append(("addr", address or "unknown", opts.per_address, "client address"))
    if issuer_id and opts.per_issuer > 0:
        counters.append(("issuer", issuer_id, opts.per_issuer, "issuer"))
    if limiter is None or not counters:
        return
    try:
        hits = limiter.hit_many(
            [(k, v) for k, v, _, _ in counters], window_seconds=opts.window_seconds
        )
    except StoreUnavailable:
        return  # the grant write fails closed anyway; a limiter outage is not a denial
    for (kind, _, limit, what), (count, reset) in zip(counters, hits, strict=True):
        if count > limit:
            raise _refuse(limit, opts.window_seconds, reset, kind, what)


def address_over_limit(svc: Services, address: str) -> TooManyRequests | None:
    """Count a request refused before it named an issuer; the 429 to answer if over."""
    limiter = getattr(svc, "limits", None)
    opts = options(svc)
    if limiter is None or opts.per_address <= 0:
        return None
    try:
        count, reset = limiter.hit("addr", address or "unknown", window_seconds=opts.window_seconds)
    except StoreUnavailable:
        return None
    if count > opts.per_address:
        return _refuse(opts.per_address, opts.window_seconds, reset, "addr", "client address")
    return None


def check_identity_rate(svc: Services, requests: int, reset: int) -> None:
    """The verified identity's count comes back with the exchange's preflight read."""
    opts = options(svc)
    if opts.per_identity > 0 and requests > opts.per_identity:
        raise _refuse(opts.per_identity, opts.window_seconds, reset, "identity", "identity")


def identity_window(svc: Services) -> int:
    opts = options(svc)
    return opts.window_seconds if opts.per_identity > 0 else 0


def count_occurrence(svc: Services, kind: str, value: str) -> int:
    """How many times (kind, value) was seen in the current limits window, this time
    included; 1 when nothing counts (no limiter, or Redis unavailable)."""
    limiter = getattr(svc, "limits", None)
    if limiter is None:
        return 1
    try:
        count, _ = limiter.hit(kind, value, window_seconds=options(svc).window_seconds)
    except StoreUnavailable:
        return 1
    return int(count)


def note_denial(svc: Services, identity_id: str | None, reason: str, event: dict[str, Any]) -> None:
    """Count a suspicious denial of a verified identity; flag (and maybe suspend) it."""
    if not identity_id or reason not in SUSPICIOUS_REASONS:
        return
    limiter = getattr(svc, "limits", None)
    if limiter is None:
        return
    opts = options(svc)
    try:
        count, _ = limiter.hit("denials", identity_id, window_seconds=opts.window_seconds)
    except StoreUnavailable:
        return
    if count != opts.denials_before_flag:
        return  # flag once per window, at the threshold
    flagged = {
        "ts": svc.clock.now(),
        "event": "identity.flagged",
        "identity": identity_id,
        "outcome": "flagged",
        "reason": reason,
        "denials": count,
        "window_seconds": opts.window_seconds,
        "auto_suspend": opts.auto_suspend,
        "request_id": event.get("request_id"),
    }
    svc.audit.record(flagged)
    from broker.metrics import IDENTITY_FLAGGED

    IDENTITY_FLAGGED.inc()
    if opts.auto_suspend:
        try:
            from broker.domain.inventory import suspend_identity

            suspend_identity(
                svc,
                identity_id,
                actor="errand:abuse-detector",
                reason=f"{count} suspicious denials in {opts.window_seconds} s (last: {reason})",
            )
        except Exception as err:  # the flag stands; an operator follows up
            log.error("auto-suspension of %s failed: %s", identity_id, type(err).__name__)


def _auth_failures(svc: Services) -> Any:
    extras = getattr(svc, "extras", None)
    return extras.get("auth_failures") if isinstance(extras, dict) else None


def _auth_event(
    svc: Services, kind: str, reason: str, outcome: str, context: dict[str, Any]
) -> dict[str, Any]:
    return {
        "ts": svc.clock.now(),
        "event": "auth.failed",
        "kind": kind,  # client | admin
        "outcome": outcome,
        "reason": reason,
        **context,
    }


def check_auth_throttle(svc: Services, kind: str, context: dict[str, Any]) -> None:
    """Before any credential is compared: refuse an address past its failure limit, even
    with the right credential, or a guess that happens to be right would get through.
    `context` holds client_address and request_id."""
    store = _auth_failures(svc)
    if store is None:
        return
    try:
        failures, reset = store.failures(context.get("client_address") or "unknown")
    except StoreUnavailable:
        return  # a limiter outage is not a denial
    if failures < AUTH_FAILURES_PER_ADDRESS:
        return
    refusal = TooManyRequests(
        "too many failed authentications from this address; retry later",
        retry_after=reset,
        reason="auth_throttled",
    )
    event = _auth_event(svc, kind, refusal.reason, "throttled", {**context, "failures": failures})
    svc.audit.record(event, stored=True)  # log only: a throttled flood must not churn the stream
    raise refusal


def note_auth_failure(svc: Services, kind: str, reason: str, context: dict[str, Any]) -> None:
    """Count a failed authentication against the client address and audit it: a log line
    each time, a stream entry at most once per address per AUTH_AUDIT_GATE_SECONDS. The
    event carries the failures counted so far in the window."""
    store = _auth_failures(svc)
    failures: int | None = None
    to_stream = True
    # Redis unavailable: still audited; the throttle fails open like every limiter here.
    if store is not None:
        with contextlib.suppress(StoreUnavailable):
            failures, _, to_stream = store.note_failure(
                context.get("client_address") or "unknown",
                window_seconds=options(svc).window_seconds,
                gate_seconds=AUTH_AUDIT_GATE_SECONDS,
            )
    event = _auth_event(svc, kind, reason, "denied", {**context, "failures": failures})
    svc.audit.record(event, stored=not to_stream)
