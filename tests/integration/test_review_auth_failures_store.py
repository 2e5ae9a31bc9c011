"""broker/store/auth_failures.py on a real Redis: the failure window and the one-second audit
gate are each a key with a TTL (SET NX EX inside one script), and reading the count writes
nothing."""

from __future__ import annotations

import pytest

from broker.store.auth_failures import RedisAuthFailures

pytestmark = pytest.mark.integration


def test_auth_failures_window_and_audit_gate_on_real_redis(raw) -> None:
    store = RedisAuthFailures(raw)
    assert store.failures("2001:db8::1") == (0, 1)
    assert list(raw.scan_iter("errand:*")) == [], "a read wrote a key"

    first = store.note_failure("2001:db8::1", window_seconds=60, gate_seconds=1)
    second = store.note_failure("2001:db8::1", window_seconds=60, gate_seconds=1)
    assert first[0] == 1 and first[2] is True  # the first failure opens the audit gate
    assert second[0] == 2 and second[2] is False  # the next one within the second does not
    assert 1 <= second[1] <= 60
    count, reset = store.failures("2001:db8::1")
    assert count == 2 and 1 <= reset <= 60
    assert store.failures("2001:db8::2")[0] == 0  # per address

    names = set(raw.scan_iter("errand:*"))
    assert len(names) == 2
    assert all(
        n.startswith("errand:{a.") and n.endswith((":authfail", ":authaudit")) for n in names
    )
    assert not any(":" in n.rsplit(":", 1)[-1] or "2001" in n for n in names), names
    for name in names:
        assert 0 < raw.ttl(name) <= 60  # every key expires
    gate = next(n for n in names if n.endswith(":authaudit"))
    assert raw.ttl(gate) == 1
