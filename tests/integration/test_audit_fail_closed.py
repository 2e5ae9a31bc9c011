"""On a real Redis, an audit stream of the wrong type (WRONGTYPE for XADD) stops issuance:
the exchange and a delegation hop answer 503 and write no grant; a revocation writes
nothing either; the refusals are counted."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from broker.domain.audit_failure import AuditUnavailable
from broker.domain.token_revocation import revoke_token
from broker.store import keys
from tests.support.domain import exchange
from tests.support.redis import snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def refused() -> float:
    value = REGISTRY.get_sample_value(
        "errand_audit_write_failures_total", {"event": "script", "result": "refused"}
    )
    return value or 0.0


def test_wrongtype_audit_stream_refuses_the_exchange_and_writes_nothing(svc, raw, subject):
    issued = exchange(svc, subject(), task_id="fail-closed")
    raw.delete(keys.AUDIT_STREAM)
    raw.set(keys.AUDIT_STREAM, "not a stream")
    before, count = snapshot(raw), refused()
    with pytest.raises(AuditUnavailable) as caught:
        exchange(svc, subject(), task_id="fail-closed")
    assert caught.value.status_code == 503 and caught.value.headers()["Retry-After"]
    with pytest.raises(AuditUnavailable):
        revoke_token(issued.access_token, svc, actor="test")
    assert snapshot(raw) == before  # no grant, no index entry, no replay key, no revocation
    assert refused() == count + 2
    raw.delete(keys.AUDIT_STREAM)  # once the stream is back, issuance resumes
    assert exchange(svc, subject(), task_id="fail-closed").grant.jti
