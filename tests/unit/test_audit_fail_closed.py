"""Issuance and audited changes stop when the audit cannot be written: 503 with Retry-After,
nothing written, `errand_audit_write_failures_total` counted; a log-only event still
degrades to the log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broker.audit import AuditLog
from broker.domain.audit_failure import AuditUnavailable
from broker.domain.bulk_revocation import revoke_by
from broker.store import keys
from tests.support.builders import ADMIN_TOKEN
from tests.support.jws import token_parts
from tests.support.redis import grant_state_keys


def failures(event: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "errand_audit_write_failures_total", {"event": event, "result": result}
    )
    return value or 0.0


class BrokenStream:
    def append_audit(self, event: Mapping[str, Any]) -> None:
        raise ConnectionError("the audit stream is gone")


def test_required_event_raises_and_log_only_event_degrades() -> None:
    sink = AuditLog(BrokenStream())
    before = failures("revoke.bulk", "refused"), failures("console.login", "logged")
    with pytest.raises(AuditUnavailable) as caught:
        sink.record({"ts": 1, "event": "revoke.bulk"}, required=True)
    assert caught.value.status_code == 503 and caught.value.headers()["Retry-After"]
    sink.record({"ts": 1, "event": "console.login"})  # log only: no exception
    assert failures("revoke.bulk", "refused") == before[0] + 1
    assert failures("console.login", "logged") == before[1] + 1


def test_exchange_refused_when_the_audit_stream_cannot_take_its_event(svc, exchange) -> None:
    svc.redis.delete(keys.AUDIT_STREAM)
    svc.redis.set(keys.AUDIT_STREAM, "not a stream")
    before_keys = grant_state_keys(svc)
    before = failures("script", "refused")
    resp = exchange()
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    assert resp.get_json()["error"] == "temporarily_unavailable"
    assert grant_state_keys(svc) == before_keys  # nothing issued
    assert failures("script", "refused") == before + 1


def test_revocation_completion_and_revoke_all_refused_without_their_event(
    svc, exchange, client
) -> None:
    issued = exchange().get_json()["access_token"]
    live = grant_state_keys(svc)
    epoch = svc.redis.get(keys.EPOCH)
    svc.redis.delete(keys.AUDIT_STREAM)
    svc.redis.set(keys.AUDIT_STREAM, "not a stream")
    bearer = {"Authorization": f"Bearer {issued}"}
    for resp in (
        client.post("/revoke", data={"token": issued}),
        client.post("/tasks/complete", headers=bearer),
        client.post(
            "/admin/revoke-all",
            json={"reason": "incident"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ),
    ):
        assert resp.status_code == 503, resp.get_json()
        assert resp.headers["Retry-After"]
    # Nothing changed: the grant is live, the task open, the epoch where it was.
    assert grant_state_keys(svc) == live
    assert svc.redis.get(keys.EPOCH) == epoch
    task = token_parts(issued)[1]["task_id"]
    assert svc.redis.zcard(keys.task_index(task)) == 1
    assert not svc.redis.exists(keys.task_tombstone(task))


def test_bulk_revocation_answers_503_when_its_event_is_lost(svc, exchange) -> None:
    exchange()
    svc.audit = AuditLog(BrokenStream())
    with pytest.raises(AuditUnavailable):
        revoke_by(svc, kind="identity", value="acme-deploy", reason="incident", actor="test")
