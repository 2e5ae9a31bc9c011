"""A shaped audit event carries the JSON it was measured on; the log line and the stream
entry write that text, and any change to the event drops it."""

from __future__ import annotations

import json
from typing import Any

from broker.domain.audit_shape import ShapedEvent, bounded_event, event_text, serialised
from broker.store.audit_stream import event_json

EVENT: dict[str, Any] = {
    "event": "token.exchange",
    "outcome": "issued",
    "identity": "acme-app-deploy",
    "audience": ["https://deploy.acme.example"],
    "purpose": "caf\u00e9",
    "exp": 2_000_000_000,
}


def test_the_measured_text_is_the_one_written() -> None:
    shaped = bounded_event(EVENT)
    assert isinstance(shaped, ShapedEvent)
    expected = json.dumps(EVENT, separators=(",", ":"))
    assert shaped.json_text == expected
    assert event_text(shaped) == expected
    assert event_json(shaped) == expected
    assert event_text(EVENT) == serialised(EVENT) == expected  # a plain dict: encoded


def test_a_change_drops_the_text() -> None:
    changes = [
        lambda e: e.__setitem__("outcome", "denied"),
        lambda e: e.pop("purpose"),
        lambda e: e.update(extra=1),
        lambda e: e.setdefault("other", 2),
        lambda e: e.__delitem__("exp"),
        lambda e: e.clear(),
        lambda e: e.popitem(),
    ]
    for change in changes:
        shaped = bounded_event(EVENT)
        change(shaped)
        assert shaped.json_text is None
        assert event_json(shaped) == json.dumps(dict(shaped), separators=(",", ":"))
        assert event_text(shaped) == serialised(dict(shaped))


def test_cut_events_stay_within_the_budget() -> None:
    big = {**EVENT, "description": "x" * 5000}
    shaped = bounded_event(big)
    assert shaped.get("truncated") is True
    assert len(event_json(shaped)) <= 2048
