"""Oversized bodies (413) are pre-exchange garbage like any other: they count against the
client address limit, and once the address is over it they get the same 429 (with
Retry-After) as a malformed form would, audited as a log line only, so a flood of 70 KiB
bodies cannot churn the bounded audit stream."""

from __future__ import annotations

import json
from typing import Any

from tests.support.hostile import ObservedBroker

LIMIT = 3
LIMITS = {
    "window_seconds": 60,
    "per_address": LIMIT,
    "per_issuer": 0,
    "per_identity": 0,
    "max_live_grants_per_identity": 0,
}


def oversized(w: ObservedBroker, address: str) -> Any:
    form = w.form("token-exchange", w.token(), padding="p" * (70 * 1024))
    return w.client.post(
        "/token",
        data=form,
        environ_base={"REMOTE_ADDR": address},
        headers={"X-Request-Id": w.request_id()},
    )


def test_oversized_bodies_count_against_the_address_limit_and_stop_writing_the_stream(
    make_world,
) -> None:
    w = make_world(limits=LIMITS)
    statuses, stream_lengths = [], []
    lines_before = len(w.capture.audit_lines())
    for _ in range(LIMIT + 5):
        resp = oversized(w, "10.0.7.1")
        statuses.append(resp.status_code)
        stream_lengths.append(len(w.stream()))
        assert resp.mimetype == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "access_token" not in resp.get_json()
    assert statuses == [413] * LIMIT + [429] * 5, statuses
    # One stream entry per 413 under the limit; none once over it.
    assert stream_lengths == [1, 2, 3] + [3] * 5, stream_lengths
    # Every refusal is still a JSON log line; the later ones say why they were refused.
    lines = [json.loads(x) for x in w.capture.audit_lines()[lines_before:]]
    assert len(lines) == LIMIT + 5
    assert [e["reason"] for e in lines] == ["body_too_large"] * LIMIT + ["rate_limited"] * 5
    # Other addresses are unaffected; the limited address is limited for every request.
    assert oversized(w, "10.0.7.2").status_code == 413
    assert len(w.stream()) == 4
    limited = w.client.post(
        "/token", data=w.form("token-exchange", w.token()), environ_base={"REMOTE_ADDR": "10.0.7.1"}
    )
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_oversized_bodies_limit_is_off_with_the_address_limit(world: ObservedBroker) -> None:
    """per_address: 0 turns the address limit off for oversized bodies too: each is one 413
    with one stream entry, as before."""
    for n in range(LIMIT + 2):
        assert oversized(world, "10.0.7.3").status_code == 413
        assert len(world.stream()) == n + 1
