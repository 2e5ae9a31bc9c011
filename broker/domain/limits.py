"""Abuse limits on the token endpoint and on authentication: rates and a live-grant quota.

- Per client address, before anything is parsed.
- Per configured issuer, from the unverified `iss`, before the signature check: a flood of
  forged tokens for one issuer is slowed without touching any identity's budget.
- Per verified identity, after the token is verified and matched: never keyed by a claimed
  identity, so nobody can lock a victim out by sending garbage in its name.
- A quota of live grants per identity, enforced inside the atomic grant write.
- Failed client and admin authentications per client address: past the limit the address
  is refused (429) before any credential is compared, and at most one failure per address
  per second reaches the audit stream (every failure is logged and counted).

Flagging (and suspending) an identity that keeps being denied is broker/domain/denials.py.
Every counter fails open: a limiter outage is not a denial (the grant write fails closed
anyway)."""

from __future__ import annotations

import contextlib
from typing import Any

from broker.domain.ports import Services, StoreUnavailable
from broker.errors import TooManyRequests

# Failed client or admin authentications per client address per limits window (a fixed
# number: nobody mistypes a secret ten times a minute; a guesser needs far more).
AUTH_FAILURES_PER_ADDRESS = 10
AUTH_AUDIT_GATE_SECONDS = 1  # at most one stream event per address per this many seconds


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
    opts = svc.config.broker.limits
    counters: list[tuple[str, str, int, str]] = []
    if opts.per_address > 0:
        counters.append(("addr", address or "unknown", opts.per_address, "client address"))
    if issuer_id and opts.per_issuer > 0:
        counters.append(("issuer", issuer_id, opts.per_issuer, "issuer"))
    if not counters:
        return
    try:
        hits = svc.limiter.hit_many(
            [(k, v) for k, v, _, _ in counters], window_seconds=opts.window_seconds
        )
    except StoreUnavailable:
        return
    for (kind, _, limit, what), (count, reset) in zip(counters, hits, strict=True):
        if count > limit:
            raise _refuse(limit, opts.window_seconds, reset, kind, what)


def address_over_limit(svc: Services, address: str) -> TooManyRequests | None:
    """Count a request refused before it named an issuer; the 429 to answer if over."""
    opts = svc.config.broker.limits
    if opts.per_address <= 0:
        return None
    try:
        count, reset = svc.limiter.hit(
            "addr", address or "unknown", window_seconds=opts.window_seconds
        )
    except StoreUnavailable:
        return None
    if count > opts.per_address:
        return _refuse(opts.per_address, opts.window_seconds, reset, "addr", "client address")
    return None


def check_identity_rate(svc: Services, requests: int, reset: int) -> None:
    """The verified identity's count comes back with the exchange's preflight read."""
    opts = svc.config.broker.limits
    if opts.per_identity > 0 and requests > opts.per_identity:
        raise _refuse(opts.per_identity, opts.window_seconds, reset, "identity", "identity")


def identity_window(svc: Services) -> int:
    opts = svc.config.broker.limits
    return opts.window_seconds if opts.per_identity > 0 else 0


def count_occurrence(svc: Services, kind: str, value: str) -> int:
    """How many times (kind, value) was seen in the current limits window, this time
    included; 1 when Redis is unavailable."""
    try:
        count, _ = svc.limiter.hit(
            kind, value, window_seconds=svc.config.broker.limits.window_seconds
        )
    except StoreUnavailable:
        return 1
    return int(count)


# -- failed authentication ---------------------------------------------------------------------
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
    try:
        failures, reset = svc.auth_failures.failures(context.get("client_address") or "unknown")
    except StoreUnavailable:
        return
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
    failures: int | None = None
    to_stream = True
    # Redis unavailable: still audited; the throttle fails open like every limiter here.
    with contextlib.suppress(StoreUnavailable):
        failures, _, to_stream = svc.auth_failures.note_failure(
            context.get("client_address") or "unknown",
            window_seconds=svc.config.broker.limits.window_seconds,
            gate_seconds=AUTH_AUDIT_GATE_SECONDS,
        )
    event = _auth_event(svc, kind, reason, "denied", {**context, "failures": failures})
    svc.audit.record(event, stored=not to_stream)
