"""Replays of a spent subject token are refused without spending the identity's rate budget:
whoever holds a victim's used token must not be able to lock the victim out (docs/security-model.md:
only the identity's own verified requests count toward its limits)."""

from __future__ import annotations

import pytest

from broker.store import keys
from tests.support.builders import NO_LIMITS, UNIT_ISSUER, make_config
from tests.support.http import assert_oauth_error

PER_IDENTITY = 3


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(
        UNIT_ISSUER, limits={**NO_LIMITS, "window_seconds": 60, "per_identity": PER_IDENTITY}
    )


def test_replays_of_a_spent_token_do_not_consume_identity_rate_budget(
    exchange, subject, svc
) -> None:
    spent = subject()
    assert exchange(spent).status_code == 200
    for _ in range(PER_IDENTITY * 4):
        body = assert_oauth_error(exchange(spent), 400, "invalid_request")
        assert "already been used" in body["error_description"]
    # The legitimate identity still exchanges fresh tokens, up to its own limit.
    fresh = exchange()
    assert fresh.status_code == 200, fresh.get_json()
    counter = svc.redis.get(keys.rate_counter("identity", "acme-deploy"))
    assert int(counter) == 2  # the two exchanges that issued, no replay
    for _ in range(PER_IDENTITY - 2):
        assert exchange().status_code == 200
    assert_oauth_error(exchange(), 429, "temporarily_unavailable")
