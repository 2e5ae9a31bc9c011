"""Every line the web processes (gunicorn's error and access logs, the app's log lines, audit
events) and the worker write is one JSON object; the caller's X-Request-Id comes back and
finds the request's lines."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.forms import deploy_form
from tests.support.redis import RedisDbs
from tests.support.stack import Stack, mint

pytestmark = pytest.mark.e2e


def _lines(stack: Stack, name: str) -> list[str]:
    text = (stack.workdir / f"{name}.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def test_web_and_worker_logs_are_json_lines(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs, dev_issuer: Any, http
) -> None:
    url = redis_dbs.url("json-logs")
    stack = Stack(tmp_path_factory.mktemp("json-logs"), url, dev_issuer.issuer).start()
    try:
        rid = "json-logs-check-1"
        resp = http.post(
            stack.url + "/token",
            data=deploy_form(mint(dev_issuer), task_id="json-logs"),
            headers={"X-Request-Id": rid},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Request-Id"] == rid
        time.sleep(2.5)  # a couple of sweeps (ERRAND_SWEEP_INTERVAL_SECONDS=1 in the stack)
    finally:
        stack.stop()
        redis_dbs.flush("json-logs")
    web, worker = _lines(stack, "web"), _lines(stack, "worker")
    assert web and worker, stack.logs()
    parsed = {}
    for name, lines in (("web", web), ("worker", worker)):
        for line in lines:
            assert line.startswith("{"), f"{name}.log: {line!r}"
            parsed.setdefault(name, []).append(json.loads(line))
    # The audit event of the exchange carries the id the caller sent.
    assert any(e.get("request_id") == rid for e in parsed["web"] if "event" in e)
    # gunicorn's own lines and the access log: the common fields; the access line keeps
    # method, path and status only.
    gunicorn = [e for e in parsed["web"] if str(e.get("logger", "")).startswith("gunicorn.")]
    assert {"gunicorn.error", "gunicorn.access"} <= {e["logger"] for e in gunicorn}
    for event in gunicorn:
        assert {"ts", "level", "logger", "message"} <= event.keys()
    assert any(
        '"POST /token"' in e["message"] for e in gunicorn if e["logger"] == "gunicorn.access"
    )
    # The routine sweep is not logged at INFO.
    assert not [e for e in parsed["worker"] if "sweep" in str(e.get("message", ""))], worker
