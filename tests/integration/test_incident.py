"""Revoke-all, bulk revocation, the revocation feed, signed records and key rotation,
against a real redis-server."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import pytest
import redis

from broker.clock import FixedClock
from broker.dev.issuer import github_claims, mint_with
from broker.domain.bulk_revocation import fanout, revoke_all, revoke_by
from broker.domain.exchange import exchange_token
from broker.domain.introspection import introspect
from broker.domain.models import TOKEN_TYPE_JWT, ExchangeRequest
from broker.errors import BrokerError, InvalidRequest
from broker.services import build_services
from broker.settings import Settings
from broker.store import keys as K
from broker.tokens.evidence import EvidenceInvalid, verify_record
from broker.tokens.keyrecord import new_kek
from broker.tokens.keyring import KeyError_
from broker.tokens.verify import verify_access_token
from tests.support.builders import AUDIENCE, DEPLOY_AUD, StaticFetcher, make_config

pytestmark = pytest.mark.integration
ISSUER = "https://ci.example"


@pytest.fixture
def svc(redis_url, issuer_key, tmp_path: Path):
    kek = tmp_path / "kek"
    kek.write_text(new_kek())
    settings = Settings(
        config_path=tmp_path / "unused.yaml",
        redis_url=redis_url,
        signing_key_dir=None,
        kek_file=kek,
    )
    return build_services(
        settings,
        config=make_config(ISSUER),
        fetcher=StaticFetcher({"keys": [issuer_key.public_jwk()]}),
    )


def _exchange(svc, issuer_key, *, task: str | None = None, ref: str = "refs/heads/main"):
    claims = github_claims(issuer=ISSUER, audience=AUDIENCE, ref=ref)
    req = ExchangeRequest(
        subject_token=mint_with(issuer_key, claims),
        subject_token_type=TOKEN_TYPE_JWT,
        audiences=(DEPLOY_AUD,),
        scopes=("deploy:write",) if ref == "refs/heads/main" else ("release:write",),
        task_id=task,
    )
    return exchange_token(req, svc)


def _active(svc, issued) -> bool:
    return bool(introspect(issued.access_token, svc)["active"])


def test_revoke_all_is_immediate_and_later_exchanges_work(svc, issuer_key):
    start_epoch = svc.revocations.current_epoch()
    assert (
        start_epoch > 1_700_000_000
    )  # starts at Redis's clock: above any epoch before a data loss
    before = [_exchange(svc, issuer_key) for _ in range(30)]
    assert all(_active(svc, t) for t in before)
    result = revoke_all(svc, reason="incident 7", actor="alice")
    assert result.revoked == 30 and result.epoch == start_epoch + 1
    # No fan-out has run yet: the cut alone makes every old token inactive.
    assert not any(_active(svc, t) for t in before)
    after = _exchange(svc, issuer_key)
    assert _active(svc, after)
    totals = fanout(svc, result.epoch)
    assert totals["revoked"] == 30
    r = svc.redis
    assert r.keys("errand:*:grant:*") == [K.grant(after.grant.jti)]
    assert r.zcard(K.EXPIRY_INDEX) == 1
    assert _active(svc, after)
    assert fanout(svc, result.epoch)["revoked"] == 0  # idempotent


def test_exchange_in_flight_during_revoke_all_does_not_survive(svc, issuer_key, monkeypatch):
    """An exchange that read the epoch before the cut has its grant write refused."""
    store = svc.store
    original = store.save_grant

    def cut_then_save(grant, **kw):
        revoke_all(svc, reason="race", actor="test")
        return original(grant, **kw)

    monkeypatch.setattr(store, "save_grant", cut_then_save)
    with pytest.raises(BrokerError) as err:
        _exchange(svc, issuer_key)
    assert err.value.error == "temporarily_unavailable"
    assert svc.redis.keys("errand:*:grant:*") == []


@pytest.mark.parametrize("kind", ["task", "identity", "owner", "identity_type", "issuer"])
def test_each_bulk_kind_ends_its_grants_only(svc, issuer_key, kind):
    target = [_exchange(svc, issuer_key, task="task-a") for _ in range(3)]
    other = _exchange(svc, issuer_key, task="task-b", ref="refs/heads/release")  # acme-release
    value = {
        "task": "task-a",
        "identity": "acme-deploy",
        "owner": "platform-team",
        "identity_type": "service",
        "issuer": "gha",
    }[kind]
    result = revoke_by(svc, kind=kind, value=value, reason="contain", actor="bob")
    assert not any(_active(svc, t) for t in target)
    if kind in ("identity_type", "issuer"):
        assert result.revoked == 4 and not _active(svc, other)  # both identities are services
    else:
        assert result.revoked == 3 and _active(svc, other)
    events = svc.store.audit_events(task_id=None, limit=50)
    bulk = [e for e in events if e.get("event") == "revoke.bulk"]
    assert bulk and bulk[0]["actor"] == "bob" and bulk[0]["reason"] == "contain"
    assert bulk[0]["revoked"] == result.revoked


def test_bulk_revocation_needs_a_reason_and_a_known_kind(svc):
    with pytest.raises(InvalidRequest):
        revoke_by(svc, kind="identity", value="acme-deploy", reason="", actor="x")
    with pytest.raises(InvalidRequest):
        revoke_by(svc, kind="everything", value="x", reason="r", actor="x")
    with pytest.raises(InvalidRequest):
        revoke_all(svc, reason="  ", actor="x")


def test_feed_carries_jti_task_identity_and_epoch(svc, issuer_key):
    from broker.domain.task_completion import complete_task
    from broker.domain.token_revocation import revoke_token

    a = _exchange(svc, issuer_key)
    b = _exchange(svc, issuer_key, task="task-feed")
    revoke_token(a.access_token, svc, actor="holder")
    complete_task(b.access_token, svc)
    revoke_by(svc, kind="identity", value="acme-deploy", reason="r", actor="x")
    epoch = revoke_all(svc, reason="r", actor="x").epoch
    now = int(svc.clock.now())
    page = svc.revocations.read_feed("0", limit=100, now=now)
    kinds = {(e["kind"], e["value"]) for e in page.entries}
    assert ("jti", a.grant.jti) in kinds
    assert ("task", "task-feed") in kinds
    # Bulk revocations publish one exact entry per grant, not a clock-dependent cut-off.
    assert ("identity", "acme-deploy") not in kinds
    assert sum(1 for kind, _ in kinds if kind == "jti") >= 2
    assert page.epoch == epoch
    # Paging: a cursor returns only what came after it.
    first = svc.revocations.read_feed("0", limit=1, now=now)
    assert first.more and len(first.entries) <= 1
    rest = svc.revocations.read_feed(first.cursor, limit=100, now=now)
    assert len(rest.entries) == len(page.entries) - len(first.entries)
    assert not svc.revocations.valid_cursor("1-2-3") and not svc.revocations.valid_cursor("$")


def test_revocation_records_verify_and_tampering_is_detected(svc, issuer_key):
    _exchange(svc, issuer_key)
    result = revoke_by(svc, kind="identity", value="acme-deploy", reason="leak", actor="carol")
    jwks = svc.keyring.all_public_keys()
    claims = verify_record(result.record, jwks, svc.config.broker.issuer)
    assert claims["selector"] == {"identity": "acme-deploy"}
    assert claims["revoked"] == 1 and claims["actor"] == "carol" and claims["reason"] == "leak"
    header, payload, sig = result.record.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["revoked"] = 0
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(EvidenceInvalid):
        verify_record(f"{header}.{forged}.{sig}", jwks, svc.config.broker.issuer)
    stored = svc.revocations.list_evidence(10)
    assert stored[0]["id"] == result.record_id and stored[0]["jws"] == result.record
    # A record stays verifiable after a scheduled rotation retires its key.
    svc.keyring.rotate()
    assert verify_record(result.record, svc.keyring.all_public_keys(), svc.config.broker.issuer)


def test_scheduled_rotation_publishes_before_signing_and_keeps_old_key(svc, issuer_key):
    old = _exchange(svc, issuer_key)
    old_kid = svc.keyring.active.kid
    plan = svc.keyring.rotate()
    new_kid = plan["kid"]
    kids = {k["kid"] for k in svc.keyring.jwks()["keys"]}
    assert {old_kid, new_kid} <= kids  # published before it signs
    assert svc.keyring.active.kid == old_kid  # still signing with the old key
    assert svc.keyring.rotate()["already_scheduled"] is True
    assert _active(svc, old)


def test_keys_are_shared_by_nodes_and_sealed_at_rest(svc, redis_url, tmp_path, issuer_key):
    svc.keyring.active  # noqa: B018 - the first node creates the first key on first use
    raw = svc.redis.hgetall(K.SIGNING_KEYS)
    assert raw and all("PRIVATE KEY" not in v for v in raw.values())
    # A second node with the same KEK signs with the same key; one with another KEK fails.
    settings = svc.settings
    other = build_services(
        settings, config=svc.config, fetcher=StaticFetcher({"keys": [issuer_key.public_jwk()]})
    )
    assert other.keyring.active.kid == svc.keyring.active.kid
    token = _exchange(svc, issuer_key)
    assert _active(other, token)
    bad = tmp_path / "bad-kek"
    bad.write_text(new_kek())
    wrong = Settings(
        config_path=settings.config_path, redis_url=redis_url, signing_key_dir=None, kek_file=bad
    )
    # Its records fail authentication: refused (never used), and no key of its own is made.
    with pytest.raises(KeyError_, match="refused"):
        build_services(wrong, config=svc.config).keyring.active  # noqa: B018
    assert svc.redis.hgetall(K.SIGNING_KEYS) == raw


def test_emergency_rotation_removes_old_key_at_once(svc, issuer_key):
    old = _exchange(svc, issuer_key)
    old_kid = svc.keyring.active.kid
    svc.keyring.rotate(emergency=True)
    assert old_kid not in {k["kid"] for k in svc.keyring.jwks()["keys"]}
    assert not _active(svc, old)  # our own introspection no longer trusts its signature
    new = _exchange(svc, issuer_key)
    claims = verify_access_token(
        new.access_token, svc.keyring, svc.config.broker.issuer, now=svc.clock.now(), leeway=0
    )
    assert claims["jti"] == new.grant.jti


def test_revoke_all_under_concurrent_exchanges(svc, issuer_key):
    """Nothing minted before the cut survives; nothing after it is wrongly refused."""
    issued: list[tuple[float, object]] = []
    errors: list[str] = []
    cut = threading.Event()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                t = _exchange(svc, issuer_key)
                issued.append((cut.is_set(), t))
            except BrokerError as err:
                errors.append(err.error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    import time

    time.sleep(0.5)
    result = revoke_all(svc, reason="load test", actor="ci")
    cut.set()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    epoch = result.epoch
    assert issued
    for _after_cut, tok in issued:
        active = _active(svc, tok)
        assert active == (tok.grant.epoch >= epoch)
    # Everything issued once the cut was visible is live; only in-flight writes may be refused.
    assert all(_active(svc, tok) for after, tok in issued if after and tok.grant.epoch >= epoch)
    assert set(errors) <= {"temporarily_unavailable"}
    assert len(errors) <= 4


def test_redis_down_during_revoke_all_is_an_error_not_a_silent_success(tmp_path, issuer_key):
    from broker.dev.embedded_redis import RedisProcess

    server = RedisProcess(tmp_path / "r").start()
    kek = tmp_path / "kek"
    kek.write_text(new_kek())
    s = Settings(
        config_path=tmp_path / "x", redis_url=server.url, signing_key_dir=None, kek_file=kek
    )
    svc = build_services(
        s,
        config=make_config(ISSUER),
        clock=FixedClock(),
        fetcher=StaticFetcher({"keys": [issuer_key.public_jwk()]}),
    )
    svc.keyring.active  # noqa: B018 - load keys while Redis is up
    server.kill()
    try:
        with pytest.raises(BrokerError) as err:
            revoke_all(svc, reason="incident", actor="x")
        assert err.value.error == "temporarily_unavailable"
    finally:
        server.stop()
    assert isinstance(redis.ConnectionError(), redis.RedisError)
