"""Introspecting a completed task's token is not the identity's own request: whoever holds a
dead token (or a resource server it is shown to) must not be able to get the identity flagged
or suspended by presenting it. Those introspections are audited, never counted."""

from __future__ import annotations

import pytest

from broker.domain.task_completion import complete_task
from tests.support.builders import NO_LIMITS, UNIT_ISSUER, make_config
from tests.support.http import introspect
from tests.support.redis import stream_events

THRESHOLD = 3


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    limits = {**NO_LIMITS, "denials_before_flag": THRESHOLD, "auto_suspend": True}
    return make_config(UNIT_ISSUER, limits=limits)


def test_used_after_completion_introspection_never_flags_or_suspends_the_identity(
    client, issued, svc, logs
) -> None:
    token = issued(task_id="finished-task")["access_token"]
    complete_task(token, svc)

    for _ in range(THRESHOLD * 4):
        resp = introspect(client, token)
        assert resp.status_code == 200
        assert resp.get_json() == {"active": False}

    events = stream_events(svc)
    assert not [e for e in events if e.get("event") == "identity.flagged"], events
    assert not [e for e in events if e.get("event") == "identity.suspended"], events
    assert svc.store.identity_state("acme-deploy") is None
    # The identity can still exchange, for another task.
    assert issued(task_id="next-task")["task_id"] == "next-task"

    # Still audited: in the stream (once per token and window, so a dead token cannot churn
    # the bounded stream) and as a log line for every introspection.
    stored = [e for e in events if e.get("reason") == "used_after_completion"]
    assert len(stored) == 1, stored
    assert stored[0]["identity"] == "acme-deploy"
    assert stored[0]["task"] == "finished-task"
    assert stored[0]["outcome"] == "inactive"
    logged = [e for e in logs.audit_events() if e.get("reason") == "used_after_completion"]
    assert len(logged) == THRESHOLD * 4
    assert logged[-1]["seen"] == THRESHOLD * 4


def test_the_identitys_own_denials_still_count(exchange, svc) -> None:
    """The fix narrows what counts; the identity's own verified requests still flag it."""
    for _ in range(THRESHOLD):
        assert exchange(scope="deploy:admin").status_code == 400
    flagged = [e for e in stream_events(svc) if e.get("event") == "identity.flagged"]
    assert len(flagged) == 1 and flagged[0]["identity"] == "acme-deploy"
