"""Log capture: every record of the root logger and of 'errand.audit' (which does not
propagate), so a test can read audit lines and check that no secret reached a log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Attached to the root and to 'errand.audit': a propagated record arrives twice.
        if not any(r is record for r in self.records[-4:]):
            self.records.append(record)

    def lines(self) -> list[str]:
        """Each record's message plus every attribute it carries (extras included)."""
        out = []
        for rec in self.records:
            out.append(rec.getMessage())
            out.append(repr(rec.__dict__))
        return out

    def texts(self) -> list[str]:
        """One text per record: its message and every attribute it carries."""
        return [f"{r.getMessage()} {r.__dict__!r}" for r in self.records]

    def audit_lines(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.name == "errand.audit"]

    def audit_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_lines()]


@contextmanager
def captured_logs() -> Iterator[ListHandler]:
    """A ListHandler on the root logger and 'errand.audit', both at DEBUG, for the block."""
    handler = ListHandler()
    root = logging.getLogger()
    audit = logging.getLogger("errand.audit")
    levels = (root.level, audit.level)
    root.addHandler(handler)
    audit.addHandler(handler)
    root.setLevel(logging.DEBUG)
    audit.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        audit.removeHandler(handler)
        root.setLevel(levels[0])
        audit.setLevel(levels[1])
