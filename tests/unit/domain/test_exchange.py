"""broker/domain/exchange.py: races between the preflight read and the atomic grant write."""

from __future__ import annotations

from typing import Any

from broker.store import keys
from tests.support.http import assert_oauth_error
from tests.support.redis import grant_state_keys, stream_events


def after_preflight(svc: Any, monkeypatch: Any, action: Any) -> None:
    """Run `action` right after the preflight read, as if another request ran in between."""
    real = svc.store.preflight

    def preflight(**kw: Any) -> Any:
        state = real(**kw)
        action(kw)
        return state

    monkeypatch.setattr(svc.store, "preflight", preflight)


def test_revoke_all_during_the_exchange_refuses_the_write(exchange, svc, monkeypatch) -> None:
    r = svc.redis
    after_preflight(svc, monkeypatch, lambda kw: r.incr(keys.EPOCH))
    resp = exchange()
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert "Retry-After" in resp.headers
    assert grant_state_keys(svc) == set()
    monkeypatch.undo()
    assert exchange().status_code == 200  # the caller retries against the new epoch


def test_task_completed_during_the_exchange_refuses_the_write(exchange, svc, monkeypatch) -> None:
    def finish(kw: dict[str, Any]) -> None:
        svc.store.complete_task(
            kw["task_id"],
            identity_id=kw["identity_id"],
            tombstone_seconds=3600,
            audit={"event": "x"},
            now=0,
        )

    after_preflight(svc, monkeypatch, finish)
    resp = exchange(task_id="racing-task")
    body = assert_oauth_error(resp, 400, "invalid_request")
    assert "task" in body["error_description"]
    assert grant_state_keys(svc) == set()


def test_concurrent_replay_is_refused_by_the_atomic_write(
    exchange, subject, svc, monkeypatch
) -> None:
    token = subject()
    r = svc.redis

    def other_request_wins(kw: dict[str, Any]) -> None:
        r.set(keys.replay(kw["issuer_id"], kw["jti"]), "1", ex=600)

    after_preflight(svc, monkeypatch, other_request_wins)
    body = assert_oauth_error(exchange(token), 400, "invalid_request")
    assert "already been used" in body["error_description"]
    assert set(r.scan_iter("errand:*:grant:*")) == set()


def test_issued_grant_state_is_written_together(issued, svc) -> None:
    body = issued(task_id="atomic")
    r = svc.redis
    (grant_key,) = r.scan_iter("errand:*:grant:*")
    jti = grant_key.split(":grant:", 1)[1]
    assert r.zscore(keys.task_index("atomic"), jti) is not None
    assert r.zscore(keys.identity_index("acme-deploy"), jti) is not None
    assert not r.exists("errand:owner:platform-team")  # owners go through their identities
    assert len(list(r.scan_iter("errand:replay:*"))) == 1
    assert r.ttl(grant_key) > 0
    # The issued event was written in the same script as the grant.
    assert [e["outcome"] for e in stream_events(svc) if e.get("event") == "token.exchange"] == [
        "issued"
    ]
    assert body["task_id"] == "atomic"
