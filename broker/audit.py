"""Audit events: one JSON log line per decision, and an entry in a bounded Redis stream.

Events never hold a token, an assertion or a key: only the SHA-256 of a token. Every event is
shaped before it is written (`bounded_event`, broker/domain/audit_shape.py): no unverified
text, at most 2 KiB."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from broker.domain.audit_shape import bounded_event, event_text
from broker.metrics import count_audit_event

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

    def record(self, event: Mapping[str, Any], *, stored: bool = False) -> None:
        """Log the event and append it to the stream; `stored=True` logs only (the stream
        already holds it, or it must not be written there)."""
        event = bounded_event(event)
        audit_log.info(event_text(event))  # the JSON bounded_event measured, not a new one
        count_audit_event(event)
        if stored or self._appender is None:
            return
        try:
            self._appender.append_audit(event)
        except Exception:  # the log line above is the record of last resort
            logging.getLogger(__name__).warning(
                "audit stream unavailable; event kept in the log only",
                extra={"event_name": event.get("event")},
            )
