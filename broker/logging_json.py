"""One log format for the web and worker processes: each record is one line of JSON.

`{"ts": ..., "level": ..., "logger": ..., "message": ...}` plus the record's `extra` fields
(request_id, count, ...) and, for an exception, its type and traceback: the same text the
plain format wrote, nothing more. The record's `args` are never written on their own (the
access log's carry request headers and the query string; only the formatted message is).
Audit events keep their own shape (broker/audit.py): they are JSON objects already.

No Flask, Redis or RQ here: `python -m workers` and gunicorn's config import it."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has: not extras.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))


def json_handler(stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


class SweepAtDebug(logging.Filter):
    """RQ logs every job it runs at INFO; the periodic expiry sweep (broker/jobs.py) is
    routine, so its lines (those that name its job id or function) are lowered to DEBUG and,
    with the logger at INFO, not written. Its failures (WARNING and above) are kept."""

    def __init__(self, *markers: str) -> None:
        super().__init__()
        self._markers = markers

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and self._mentions_sweep(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True

    def _mentions_sweep(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is written as it is
            return False
        return any(marker in message for marker in self._markers)


def configure_logging(level: int = logging.INFO) -> None:
    """The root logger writes JSON lines to stderr. Like logging.basicConfig, it does nothing
    when the root logger has a handler already (a second call, a test runner's capture)."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.addHandler(json_handler())
    root.setLevel(level)
