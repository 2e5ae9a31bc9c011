"""Audit events: one JSON log line per decision, and an entry in a bounded Redis stream.

Events never hold a token, an assertion, a jti or a key: only their HMACs under the audit
key (broker/domain/audit_hmac.py). Every event is
shaped before it is written (`bounded_event`, broker/domain/audit_shape.py): no unverified
text, at most 2 KiB."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from broker.domain.audit_failure import AuditUnavailable
from broker.domain.audit_shape import bounded_event, event_text
from broker.metrics import count_audit_event, count_audit_write_failure

audit_log = logging.getLogger("errand.audit")


class _Appender(Protocol):
    def append_audit(self, event: Mapping[str, Any]) -> None: ...


def configure_audit_logging() -> None:
    """JSON lines on stdout under the `errand.audit` logger, once per process."""
    if audit_log.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


class AuditLog:
    def __init__(self, appender: _Appender | None) -> None:
        self._appender = appender

    def record(
        self, event: Mapping[str, Any], *, stored: bool = False, required: bool = False
    ) -> None:
        """Log the event and append it to the stream; `stored=True` logs only (the stream
        already holds it, or it must not be written there).

        `required=True` for an event that must be in the audit trail: when the stream
        cannot take it, AuditUnavailable (503, counted) instead of the log alone."""
        event = bounded_event(event)  # also turns credentials and jtis into HMACs
        audit_log.info(event_text(event))  # the JSON bounded_event measured, not a new one
        count_audit_event(event)
        if stored:
            return
        name = str(event.get("event", "unknown"))
        if self._appender is None:
            if required:
                count_audit_write_failure(name, "refused")
                raise AuditUnavailable("no audit stream is wired")
            return
        try:
            self._appender.append_audit(event)
        except Exception as err:
            if required:
                count_audit_write_failure(name, "refused")
                raise AuditUnavailable(f"audit append failed: {type(err).__name__}") from err
            count_audit_write_failure(name, "logged")
            # A log-only event: the log line above is its record of last resort.
            logging.getLogger(__name__).warning(
                "audit stream unavailable; event kept in the log only",
                extra={"event_name": name},
            )
