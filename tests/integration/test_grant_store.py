"""The grant write on a real Redis: one Lua script, TTLs, indexes, replay, tombstone, epoch.

docs/security-model.md, "State and faults" and "Every rejected request": a grant, its indexes, the
replay entry and the audit record exist together or not at all, and a refused exchange
leaves no state behind except its audit event."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import jwt
import pytest

from broker.domain.audit_hmac import jti_hmac
from broker.domain.introspection import introspect
from broker.domain.models import Grant
from broker.domain.ports import WriteRefused
from broker.domain.task_completion import complete_task
from broker.errors import (
    BrokerError,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable,
)
from broker.store import keys
from broker.store.grant_record import expiry_member
from broker.tokens.keyring import generate_key
from tests.support.builders import AUDIENCE, DENIAL_MAY_TOUCH
from tests.support.domain import exchange
from tests.support.redis import audit_events, snapshot

pytestmark = pytest.mark.integration

SKEW = 60  # BrokerOptions.clock_skew_seconds default, used by make_config


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# -- a successful write --------------------------------------------------------------------
def test_grant_key_ttl_equals_token_lifetime(svc, raw, subject):
    issued = exchange(svc, subject(), requested_lifetime=120, task_id="ttl-task")
    grant = issued.grant
    key = keys.grant(grant.jti)

    assert issued.expires_in == 120
    assert grant.exp - grant.iat == 120
    assert raw.expiretime(key) == grant.exp  # EXPIREAT exactly the token's exp
    assert 118 <= raw.ttl(key) <= 120
    record = raw.hgetall(key)
    assert record["t"] == "ttl-task"
    assert record["i"] == "acme-deploy"
    assert record["o"] == "platform-team"
    assert record["e"] == str(grant.exp)
    assert record["p"] == raw.get(keys.EPOCH)  # stamped with the current revoke-all epoch
    assert record["a"] == "https://deploy.acme.example"  # one audience: as itself, not JSON
    # The per-task/identity indexes never outlive their newest grant by much, and never die
    # before it.
    for index in (
        keys.task_index("ttl-task"),
        keys.identity_index("acme-deploy"),
    ):
        assert raw.expiretime(index) == grant.exp


def test_grant_indexes_hold_the_jti(svc, raw, subject):
    issued = exchange(svc, subject(), task_id="idx-task")
    g = issued.grant

    assert raw.zscore(keys.task_index("idx-task"), g.jti) == g.exp
    assert raw.zscore(keys.identity_index("acme-deploy"), g.jti) == g.exp
    assert not raw.exists("errand:owner:platform-team")  # owners go through their identities
    member = f"{g.jti} idx-task acme-deploy"
    assert member == expiry_member(g)
    assert raw.zscore(keys.EXPIRY_INDEX, member) == g.exp
    # ... and the issuance is in the audit stream, written by the same script, without the token.
    events = [e for e in audit_events(raw) if e.get("jti_hmac") == jti_hmac(g.jti)]
    assert [e["outcome"] for e in events] == ["issued"]
    assert issued.access_token not in json.dumps(events)


def test_replay_entry_expires_at_subject_exp_plus_skew(svc, raw, subject):
    token = subject()
    claims = _claims(token)
    exchange(svc, token)

    replay_key = keys.replay("gha", claims["jti"])
    assert raw.get(replay_key) == "1"
    assert raw.expiretime(replay_key) == claims["exp"] + SKEW
    # Keyed on a hash of the issuer's jti, never the raw jti or the token bytes.
    assert claims["jti"] not in replay_key

    with pytest.raises(InvalidRequest) as denied:
        exchange(svc, token)
    assert denied.value.reason == "replayed"


def test_same_subject_token_raced_from_many_threads_issues_once(svc, raw, subject):
    """Preflight runs outside the script; the SET NX inside it is what decides."""
    token = subject()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def go() -> None:
        barrier.wait()
        try:
            exchange(svc, token, task_id="race-task")
            result = "issued"
        except BrokerError as err:
            result = err.reason
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["issued"] + ["replayed"] * 7
    assert raw.zcard(keys.task_index("race-task")) == 1
    assert len(list(raw.scan_iter(match="errand:*:grant:*"))) == 1


# -- denials leave no state ----------------------------------------------------------------
def _other_key_token(issuer_key, dev_issuer, tmp_path) -> str:
    from broker.dev.issuer import github_claims, mint_with

    other = generate_key(tmp_path / "other-issuer")
    claims = github_claims(issuer=dev_issuer.issuer, audience=AUDIENCE, now=time.time())
    return mint_with(other, claims, headers={"kid": issuer_key.kid})  # our issuer's kid, wrong key


DENIALS = {
    "wrong_repository_id": (
        dict(repository_id="999999"),
        {},
        InvalidRequest,
        "no_matching_identity",
    ),
    "wrong_ref": (dict(ref="refs/heads/feature"), {}, InvalidRequest, "no_matching_identity"),
    "wrong_owner_id": (dict(repository_owner_id="1"), {}, InvalidRequest, "no_matching_identity"),
    "audience_not_allowed": (
        {},
        dict(audiences=("https://evil.example",)),
        InvalidTarget,
        "audience_not_allowed",
    ),
    "scope_not_allowed": ({}, dict(scopes=("deploy:admin",)), InvalidScope, "scope_not_allowed"),
    "expired_subject": (
        lambda now: dict(exp=now - 600, iat=now - 900, nbf=now - 900),
        {},
        InvalidRequest,
        "expired",
    ),
    "subject_for_other_audience": (dict(aud="someone-else"), {}, InvalidRequest, "wrong_audience"),
    "unknown_issuer": (
        dict(iss="https://unknown-issuer.example"),
        {},
        InvalidRequest,
        "unknown_issuer",
    ),
    "unknown_kid": (dict(_headers={"kid": "no-such-kid"}), {}, InvalidRequest, "unknown_key"),
}


@pytest.mark.parametrize("case", sorted(DENIALS))
def test_denied_exchange_writes_no_keys(case, svc, raw, subject):
    claim_overrides, request_overrides, error, reason = DENIALS[case]
    # Warm up: one good exchange, so the JWKS is cached and indexes exist that a bug could touch.
    exchange(svc, subject(), task_id="denial-task")
    if callable(claim_overrides):
        claim_overrides = claim_overrides(int(time.time()))
    token = subject(**claim_overrides)
    keys_before = set(raw.keys("*"))
    before = snapshot(raw)
    audit_before = raw.xlen(keys.AUDIT_STREAM)

    with pytest.raises(error) as denied:
        exchange(svc, token, task_id="denial-task", **request_overrides)

    assert denied.value.reason == reason
    assert snapshot(raw) == before
    # No key appeared or vanished, apart from the JWKS mirror and its refresh lock.
    changed = set(raw.keys("*")) ^ keys_before
    assert all(k.startswith(DENIAL_MAY_TOUCH) for k in changed), changed
    # One audit event for the denial: reason code, no token.
    assert raw.xlen(keys.AUDIT_STREAM) == audit_before + 1
    event = audit_events(raw)[-1]
    assert event["outcome"] == "denied"
    assert event["reason"] == reason
    assert event["request_id"] == "it-req"
    assert event["client_address"] == "127.0.0.1"
    assert token not in json.dumps(event)


@pytest.mark.parametrize("case", ["audience_not_allowed", "scope_not_allowed"])
def test_denial_after_verification_does_not_burn_the_subject_jti(case, svc, raw, subject):
    """Otherwise anyone who sees a victim's token in flight could spend it with a bad request."""
    _, request_overrides, error, _ = DENIALS[case]
    token = subject()
    with pytest.raises(error):
        exchange(svc, token, **request_overrides)
    assert raw.exists(keys.replay("gha", _claims(token)["jti"])) == 0
    issued = exchange(svc, token)  # the same token still works with a proper request
    assert introspect(issued.access_token, svc)["active"] is True


def test_denied_bad_signature_writes_no_keys(svc, raw, subject, issuer_key, dev_issuer, tmp_path):
    exchange(svc, subject())
    forged = _other_key_token(issuer_key, dev_issuer, tmp_path)
    before = snapshot(raw)
    with pytest.raises(InvalidRequest) as denied:
        exchange(svc, forged)
    assert denied.value.reason == "bad_signature"
    assert snapshot(raw) == before


def test_replayed_exchange_writes_no_keys(svc, raw, subject):
    token = subject()
    exchange(svc, token, task_id="replay-task")
    before = snapshot(raw)
    with pytest.raises(InvalidRequest) as denied:
        exchange(svc, token, task_id="replay-task-2")
    assert denied.value.reason == "replayed"
    assert snapshot(raw) == before
    assert raw.exists(keys.task_index("replay-task-2")) == 0


# -- completed tasks and the revocation epoch ----------------------------------------------
def _grant_for(task_id: str, *, epoch: int = 0, ttl: int = 300, jti: str = "jti-forced") -> Grant:
    now = int(time.time())
    return Grant(
        jti=jti,
        identity_id="acme-deploy",
        identity_type="service",
        owner="platform-team",
        task_id=task_id,
        audiences=("https://deploy.acme.example",),
        scopes=("deploy:write",),
        iat=now,
        exp=now + ttl,
        client_id="acme-deploy",
        issuer_id="gha",
        epoch=epoch,
    )


def test_task_tombstone_refuses_a_later_grant_write(svc, raw, subject):
    first = exchange(svc, subject(), task_id="done-task")
    assert complete_task(first.access_token, svc) == {"task_id": "done-task", "completed": True}

    tomb = keys.task_tombstone("done-task")
    assert raw.exists(tomb) == 1
    assert (
        svc.config.broker.task_tombstone_seconds - 2
        <= raw.ttl(tomb)
        <= svc.config.broker.task_tombstone_seconds
    )
    # The tombstone alone makes the task's tokens inactive, before any worker runs.
    assert introspect(first.access_token, svc) == {"active": False}

    # The script itself refuses (a racing exchange that passed preflight before completion).
    before = snapshot(raw)
    with pytest.raises(WriteRefused) as refused:
        svc.store.save_grant(
            _grant_for("done-task"),
            replay=("gha", "racing-jti", int(time.time()) + 300),
            audit={"event": "token.exchange"},
            now=int(time.time()),
        )
    assert refused.value.reason == "task_completed"
    assert snapshot(raw) == before
    assert raw.exists(keys.grant("jti-forced"), keys.replay("gha", "racing-jti")) == 0

    # Through the domain: refused at preflight, with nothing written.
    with pytest.raises(InvalidRequest) as denied:
        exchange(svc, subject(), task_id="done-task")
    assert denied.value.reason == "task_completed"
    assert snapshot(raw) == before


def test_exchange_racing_completion_never_leaves_a_live_token(svc, raw, subject):
    first = exchange(svc, subject(), task_id="racing-task")
    tokens: list[str] = []
    stop = threading.Event()

    def keep_exchanging() -> None:
        while not stop.is_set():
            with contextlib.suppress(InvalidRequest):
                tokens.append(exchange(svc, subject(), task_id="racing-task").access_token)

    threads = [threading.Thread(target=keep_exchanging) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    complete_task(first.access_token, svc)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(10)
    assert tokens, "the racing threads never got a token before completion"
    assert all(introspect(t, svc) == {"active": False} for t in [first.access_token, *tokens])


def test_epoch_change_between_preflight_and_save_refuses_the_write(svc, raw):
    state = svc.store.preflight(issuer_id="gha", jti="epoch-jti", task_id="epoch-task")
    assert state.epoch == int(raw.get(keys.EPOCH))
    raw.incr(keys.EPOCH)  # a revoke-all lands while the exchange runs
    before = snapshot(raw)

    with pytest.raises(WriteRefused) as refused:
        svc.store.save_grant(
            _grant_for("epoch-task", epoch=state.epoch),
            replay=("gha", "epoch-jti", int(time.time()) + 300),
            audit={"event": "token.exchange"},
            now=int(time.time()),
        )
    assert refused.value.reason == "epoch_changed"
    assert snapshot(raw) == before
    assert raw.exists(keys.replay("gha", "epoch-jti")) == 0  # the caller may retry with it

    # With the current epoch the same write goes through.
    svc.store.save_grant(
        _grant_for("epoch-task", epoch=state.epoch + 1),
        replay=("gha", "epoch-jti", int(time.time()) + 300),
        audit={"event": "token.exchange"},
        now=int(time.time()),
    )
    assert raw.hget(keys.grant("jti-forced"), "p") == str(state.epoch + 1)


def test_exchange_refused_when_epoch_moves_during_it(svc, raw, subject):
    """The whole exchange: preflight reads epoch 0, a revoke-all bumps it, the write refuses."""
    real_preflight = svc.store.preflight

    def preflight_then_revoke_all(**kw: Any):
        state = real_preflight(**kw)
        raw.incr(keys.EPOCH)
        return state

    svc.store.preflight = preflight_then_revoke_all  # type: ignore[method-assign]
    token = subject()
    start_epoch = int(raw.get(keys.EPOCH))
    before = snapshot(raw)
    with pytest.raises(TemporarilyUnavailable) as err:
        exchange(svc, token, task_id="epoch-race")
    assert err.value.reason == "epoch_changed"
    after = snapshot(raw)
    epoch_key = keys.EPOCH.encode()
    assert {k: v for k, v in after.items() if k != epoch_key} == {
        k: v for k, v in before.items() if k != epoch_key
    }
    svc.store.preflight = real_preflight  # type: ignore[method-assign]
    # The caller retries with the same subject token: its jti was not burned.
    issued = exchange(svc, token, task_id="epoch-race")
    assert issued.grant.epoch == start_epoch + 1
    assert introspect(issued.access_token, svc)["active"] is True


def test_grant_from_an_older_epoch_is_inactive(svc, raw, subject):
    issued = exchange(svc, subject())
    assert introspect(issued.access_token, svc)["active"] is True
    raw.incr(keys.EPOCH)
    assert introspect(issued.access_token, svc) == {"active": False}


# -- the audit stream stays bounded ---------------------------------------------------------
def test_audit_stream_is_bounded(make_svc, raw, subject):
    svc = make_svc(audit_stream_maxlen=10)
    node_entries = int(raw.config_get("stream-node-max-entries")["stream-node-max-entries"])
    for i in range(150):
        # denials (appended by AuditLog) and issuances (appended inside the grant script)
        if i % 2:
            with pytest.raises(InvalidRequest):
                exchange(svc, subject(iss="https://unknown-issuer.example"))
        else:
            exchange(svc, subject())
    length = raw.xlen(keys.AUDIT_STREAM)
    # MAXLEN ~ trims whole stream nodes: bounded by maxlen plus one node, not by traffic.
    assert length <= 10 + node_entries
    assert length < 150
    newest = audit_events(raw)[-1]
    assert newest["event"] == "token.exchange"


def test_grant_write_is_all_or_nothing_when_a_command_fails_mid_script(svc, raw, subject):
    """A fault inside the script (here: an index key of the wrong type) must leave no state."""
    raw.set(keys.identity_index("acme-deploy"), "not-a-zset")
    token = subject()
    before = snapshot(raw)
    with pytest.raises(TemporarilyUnavailable):
        exchange(svc, token, task_id="partial-task")
    assert snapshot(raw) == before
