"""An exchange in flight across a revoke-all never comes out live: the epoch is taken when
the request arrives, before any key fetch or signature work, and the grant write refuses a
moved epoch (docs/security-model.md: revoke-all is a cut, not a scan)."""

from __future__ import annotations

from typing import Any

from broker.store import keys
from tests.support.http import assert_oauth_error, introspect
from tests.support.jws import token_parts
from tests.support.redis import grant_state_keys, redis_keys, stream_events


def revoke_all(svc: Any) -> None:
    svc.redis.incr(keys.EPOCH)


def assert_refused_without_state(svc: Any, resp: Any) -> None:
    body = assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert "revoked while the exchange ran" in body["error_description"]
    assert int(resp.headers["Retry-After"]) >= 1
    assert grant_state_keys(svc) == set()  # no grant, index entry or spent jti
    assert redis_keys(svc, "errand:*:task-owner:*") == set()
    denied = [e for e in stream_events(svc) if e.get("outcome") == "denied"]
    assert denied[-1]["reason"] == "epoch_changed"


def test_exchange_verifying_across_revoke_all_is_refused(
    client, exchange, subject, svc, monkeypatch
) -> None:
    """A revoke-all lands while the subject token is being verified."""
    real = svc.verifier.verify

    def verify_then_revoke_all(token: str, **kw: Any) -> Any:
        verified = real(token, **kw)
        revoke_all(svc)
        return verified

    monkeypatch.setattr(svc.verifier, "verify", verify_then_revoke_all)
    token = subject()
    epoch_at_arrival = int(svc.redis.get(keys.EPOCH))

    assert_refused_without_state(svc, exchange(token, task_id="in-flight"))

    monkeypatch.undo()
    retried = exchange(token, task_id="in-flight")  # the jti was not spent
    assert retried.status_code == 200, retried.get_json()
    access = retried.get_json()["access_token"]
    assert token_parts(access)[1]["epoch"] == epoch_at_arrival + 1
    assert introspect(client, access).get_json()["active"] is True


def test_exchange_waiting_on_issuer_keys_across_revoke_all_is_refused(
    exchange, subject, svc, fetcher, monkeypatch
) -> None:
    """The runbook's case: the exchange waits on the issuer's JWKS when revoke-all runs."""
    real = fetcher.fetch

    def slow_fetch(issuer: Any) -> Any:
        revoke_all(svc)
        return real(issuer)

    monkeypatch.setattr(fetcher, "fetch", slow_fetch)

    assert_refused_without_state(svc, exchange(task_id="waiting-on-keys"))
    assert fetcher.calls == 1

    monkeypatch.undo()
    assert exchange(task_id="waiting-on-keys").status_code == 200  # keys cached, new epoch
