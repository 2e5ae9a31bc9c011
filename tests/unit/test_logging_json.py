"""broker/logging_json.py: every record is one line of JSON, and adds nothing secret."""

from __future__ import annotations

import io
import json
import logging

import pytest

from broker.logging_json import JsonFormatter, SweepAtDebug

SECRET = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"


def _record(msg: str, *args: object, level: int = logging.INFO, **extra: object):
    record = logging.getLogger("errand.test").makeRecord(
        "errand.test", level, __file__, 1, msg, args, None, extra=extra or None
    )
    return record


def _one_line(record: logging.LogRecord) -> dict[str, object]:
    text = JsonFormatter().format(record)
    assert text.startswith("{")
    assert "\n" not in text
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_fields_and_extras() -> None:
    line = _one_line(_record("request failed: %s", "boom", request_id="abc123", count=3))
    assert line["level"] == "INFO"
    assert line["logger"] == "errand.test"
    assert line["message"] == "request failed: boom"
    assert str(line["ts"]).endswith("+00:00")
    assert line["request_id"] == "abc123"
    assert line["count"] == 3


@pytest.mark.parametrize(
    "message",
    ["multi\nline\r\nmessage", 'quote " and \\ backslash', "\u2603 \x00 \x1b[31m", ""],
)
def test_any_message_stays_one_line(message: str) -> None:
    assert _one_line(_record(message))["message"] == message


def test_an_exception_stays_one_line() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.getLogger("errand.test").makeRecord(
            "errand.test", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    line = _one_line(record)
    assert line["exc_type"] == "ValueError"
    assert "bad value" in str(line["traceback"])


def test_unserialisable_extras_are_written_as_text() -> None:
    line = _one_line(_record("x", thing=object(), data=b"\xff"))
    assert str(line["thing"]).startswith("<object")


def test_arguments_not_in_the_message_are_never_written() -> None:
    # gunicorn's access log passes every request header as args; only the message is kept.
    record = _record(
        '%(h)s "%(m)s %(U)s" %(s)s',
        {
            "h": "127.0.0.1",
            "m": "POST",
            "U": "/token",
            "s": "200",
            "q": f"token={SECRET}",
            "{authorization}i": f"Bearer {SECRET}",
        },
    )
    text = JsonFormatter().format(record)
    assert SECRET not in text
    assert json.loads(text)["message"] == '127.0.0.1 "POST /token" 200'


def test_the_sweep_filter_lowers_routine_job_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("errand.test.rq")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sweep = SweepAtDebug("sweep-expired", "workers.expiry.sweep_expired")
    logger.addFilter(sweep)
    try:
        logger.info("Worker w: errand: workers.expiry.sweep_expired() (sweep-expired)")
        logger.info("Worker w: errand: Job OK (sweep-expired)")
        logger.info("Worker w: errand: workers.tasks.cleanup_task('t') (task-t)")
        logger.warning("sweep-expired failed")
    finally:
        logger.removeFilter(sweep)
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("INFO", "Worker w: errand: workers.tasks.cleanup_task('t') (task-t)"),
        ("WARNING", "sweep-expired failed"),
    ]
