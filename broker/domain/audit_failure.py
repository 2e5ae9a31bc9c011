"""AuditUnavailable: an action that must be audited could not write its audit entry, so it
was refused (503 with Retry-After) and nothing of it was written.

Issuance (the exchange, a delegation hop), revocation, task transitions and revoke-all write
their event in the same Lua script as the change (broker/store/lua/), and each script checks
the audit stream's type before its first write: a stream it cannot append to refuses the
whole change. Events written after the change from Python (`AuditLog.record(...,
required=True)`) raise this instead of degrading to the log. Every refusal is counted in
`errand_audit_write_failures_total` (docs/observability.md)."""

from __future__ import annotations

from broker.domain.ports import StoreUnavailable


class AuditUnavailable(StoreUnavailable):
    reason = "audit_unavailable"
    description = "The audit trail cannot be written; retry later."
