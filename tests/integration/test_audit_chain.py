"""The audit sealer on real Redis: two sealers racing extend one chain, retention trims only
to a checkpoint and the rest still verifies, and entries removed before or after sealing are
found by verification (broker/store/audit_seal.py, broker/domain/audit_export.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from broker.audit_signing import signer
from broker.domain.audit_export import parse_export, verify_export
from broker.store import keys
from broker.store.audit_seal import RedisAuditSealer
from tests.support.builders import make_app
from tests.support.http import admin_headers

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def add_events(svc: Any, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        svc.audit.record({"ts": time.time(), "event": "test.event", "n": k})


def exported(svc: Any, tmp_path: Path, **params: str) -> list[str]:
    client = make_app(svc, tmp_path).test_client()
    resp = client.get("/admin/audit/export", query_string=params, headers=admin_headers())
    assert resp.status_code == 200, resp.data
    return resp.get_data(as_text=True).splitlines()


def test_two_sealers_racing_extend_one_chain(svc: Any, raw: Any, tmp_path: Path) -> None:
    sign = signer(svc)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def seal_loop() -> None:
        sealer = RedisAuditSealer(svc.redis)
        barrier.wait()
        for _ in range(20):
            results.append(sealer.seal(sign, now=time.time()))

    add_events(svc, 30)
    writers = [threading.Thread(target=seal_loop) for _ in range(2)]
    for t in writers:
        t.start()
    add_events(svc, 30, start=30)  # while they seal
    for t in writers:
        t.join()
    RedisAuditSealer(svc.redis).seal(sign, now=time.time())
    report = verify_export(parse_export(exported(svc, tmp_path)))
    assert report.ok, report.problems
    assert report.sealed == 60 and report.unsealed == 0
    sealed = [r for r in results if r is not None]
    assert sealed and sum(r.count for r in sealed) <= 60
    assert raw.xlen(keys.AUDIT_CHECKPOINTS) == report.checkpoints


def test_retention_trims_to_a_checkpoint_and_the_rest_verifies(
    svc: Any, raw: Any, tmp_path: Path
) -> None:
    sign = signer(svc)
    add_events(svc, 10)
    RedisAuditSealer(svc.redis).seal(sign, now=time.time())
    add_events(svc, 5, start=10)
    RedisAuditSealer(svc.redis).seal(sign, now=time.time())
    newest_old = raw.xrevrange(keys.AUDIT_STREAM, count=1)[0][0]
    # An hour later, with a retention of 30 minutes: both checkpoints are old enough.
    later = time.time() + 3600
    time_ms = int(later * 1000)
    raw.xadd(keys.AUDIT_STREAM, {"e": '{"event":"test.late"}'}, id=f"{time_ms}-0")
    result = RedisAuditSealer(svc.redis, retention_seconds=1800).seal(sign, now=later)
    assert result is not None and result.trimmed == 15
    assert raw.xrange(keys.AUDIT_STREAM)[0][0] == f"{time_ms}-0"
    assert raw.xrange(keys.AUDIT_CHECKPOINTS)[0][0] == newest_old  # the anchor is kept
    report = verify_export(parse_export(exported(svc, tmp_path)))
    assert report.ok, report.problems
    assert report.trimmed_checkpoints == 1 and report.sealed == 1


def test_entries_removed_before_or_after_sealing_are_found(
    svc: Any, raw: Any, tmp_path: Path
) -> None:
    sign = signer(svc)
    add_events(svc, 6)
    RedisAuditSealer(svc.redis).seal(sign, now=time.time())
    sealed_ids = [i for i, _ in raw.xrange(keys.AUDIT_STREAM)]
    raw.xdel(keys.AUDIT_STREAM, sealed_ids[2])  # after sealing: the chain breaks
    report = verify_export(parse_export(exported(svc, tmp_path)))
    assert not report.ok

    raw.delete(keys.AUDIT_STREAM, keys.AUDIT_CHAIN, keys.AUDIT_CHECKPOINTS)
    add_events(svc, 3)
    RedisAuditSealer(svc.redis).seal(sign, now=time.time())
    add_events(svc, 3, start=3)
    doomed = raw.xrevrange(keys.AUDIT_STREAM, count=1)[0][0]
    raw.xdel(keys.AUDIT_STREAM, doomed)  # before sealing: counted as lost
    result = RedisAuditSealer(svc.redis).seal(sign, now=time.time())
    assert result is not None and result.lost == 1
    report = verify_export(parse_export(exported(svc, tmp_path, format="cloudevents")))
    assert not report.ok and "gone before they were sealed" in " ".join(report.problems)
