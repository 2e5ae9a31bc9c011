"""RevocationFeed: the /revocations client, its semantics, fail-closed grace and expiry."""

from __future__ import annotations

import base64
import json
import time

import pytest

from errand_rs import ErrandVerifier, FeedUnavailable, InsufficientScope, TokenRevoked
from errand_rs.feed import FeedError, RevocationFeed, basic_auth
from tests.support.clocks import FakeClock, wait_until
from tests.support.fake_broker import RS_CLIENT_ID, RS_CLIENT_SECRET


def revoked_reason(verifier, feed, token) -> str:
    with pytest.raises(TokenRevoked) as info:
        verifier.verify(token, feed=feed)
    assert info.value.status_code == 401 and info.value.error == "invalid_token"
    return info.value.reason


def test_no_sync_yet_rejects_everything(verifier, feed, mint):
    with pytest.raises(FeedUnavailable) as info:
        verifier.verify(mint(), feed=feed)
    assert info.value.description == "revocation feed unavailable"
    assert info.value.status_code == 401


def test_synced_feed_accepts_and_authenticates_with_client_secret_basic(
    verifier, feed, mint, published
):
    feed.sync_once()
    verifier.verify(mint(), feed=feed)
    assert published.feed_requests[0] == {"since": "0", "limit": "1000"}
    assert published.feed_auth_ok == 1
    assert feed.healthy and feed.last_sync_time is not None


def test_revocation_by_jti_applies_within_one_poll(verifier, feed, mint, published):
    keep, gone = mint(), mint()
    feed.sync_once()
    published.revoke("jti", verifier.verify(gone).jti)
    verifier.verify(gone, feed=feed)  # not yet polled
    feed.sync_once()
    assert revoked_reason(verifier, feed, gone) == "revoked_jti"
    verifier.verify(keep, feed=feed)


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("task", "task_id", "task-77"),
        ("identity", "identity_id", "acme-agent-2"),
        ("owner", "owner", "payments-team"),
        ("identity_type", "identity_type", "partner"),
    ],
)
def test_cutoff_kinds_revoke_tokens_issued_up_to_not_after(
    verifier, feed, mint, published, kind, field, value
):
    now = int(time.time())
    old = mint(**{field: value, "iat": now - 10, "exp": now + 290})
    at_cut = mint(**{field: value, "iat": now - 5, "exp": now + 295})
    newer = mint(**{field: value, "iat": now, "exp": now + 300})
    unrelated = mint(iat=now - 10, exp=now + 290)
    published.revoke(kind, value, not_after=now - 5)
    feed.sync_once()
    assert revoked_reason(verifier, feed, old) == f"revoked_{kind}"
    assert revoked_reason(verifier, feed, at_cut) == f"revoked_{kind}"  # iat <= not_after
    verifier.verify(newer, feed=feed)
    verifier.verify(unrelated, feed=feed)


def test_epoch_cut_revokes_older_epochs_and_never_moves_back(verifier, feed, mint, published):
    before, after = mint(epoch=4), mint(epoch=5)
    published.epoch = 5
    feed.sync_once()
    assert revoked_reason(verifier, feed, before) == "revoked_epoch"
    verifier.verify(after, feed=feed)
    published.epoch = 3  # a broker fault, not an undo
    feed.sync_once()
    assert feed.epoch == 5
    assert revoked_reason(verifier, feed, before) == "revoked_epoch"


def test_revoked_beats_insufficient_scope(verifier, feed, mint, published):
    token = mint(scopes=("orders:read",))
    published.revoke("jti", verifier.verify(token).jti)
    feed.sync_once()
    with pytest.raises(TokenRevoked):
        verifier.verify(token, require_scopes=["orders:write"], feed=feed)
    other = mint(scopes=("orders:read",))
    with pytest.raises(InsufficientScope):
        verifier.verify(other, require_scopes=["orders:write"], feed=feed)


def test_pages_are_followed_with_the_returned_cursor(published, verifier, mint):
    tokens = [mint() for _ in range(7)]
    for t in tokens:
        published.revoke("jti", verifier.verify(t).jti)
    feed = RevocationFeed(
        published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, page_limit=3, background=False
    )
    feed.sync_once()
    ids = published.entry_ids
    assert [r["since"] for r in published.feed_requests] == ["0", ids[2], ids[5]]
    for t in tokens:
        with pytest.raises(TokenRevoked):
            verifier.verify(t, feed=feed)
    published.revoke("task", "task-x")
    feed.sync_once()
    assert published.feed_requests[-1]["since"] == ids[6]
    assert feed.entry_count() == 8


def test_entries_the_broker_skips_as_expired_still_move_the_cursor(published, feed):
    now = int(time.time())
    published.revoke("jti", "long-gone", exp=now - 10)
    live = published.revoke("jti", "still-live")
    feed.sync_once()
    assert feed.entry_count() == 1
    published.revoke("jti", "gone-again", exp=now - 10)
    last = published.entry_ids[-1]
    feed.sync_once()
    assert published.feed_requests[-1]["since"] == live
    feed.sync_once()
    assert published.feed_requests[-1]["since"] == last
    assert feed.entry_count() == 1


def test_a_cursor_the_broker_refuses_is_a_failed_sync(published):
    # A cursor the broker does not recognise is a 400, never an empty page.
    feed = RevocationFeed(published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False)
    feed._cursor = "not-a-cursor"
    with pytest.raises(FeedError, match="HTTP 400"):
        feed.sync_once()
    assert not feed.healthy


def test_wrong_client_secret_is_a_failed_sync(published):
    feed = RevocationFeed(
        published.url, RS_CLIENT_ID, "not-the-secret-0123456789", background=False
    )
    with pytest.raises(FeedError, match="HTTP 401"):
        feed.sync_once()
    assert not feed.healthy
    assert "not-the-secret" not in repr(feed)


def test_client_secret_basic_form_encodes_both_parts():
    # RFC 6749 §2.3.1: a ':' in the secret must not split it.
    assert basic_auth("rs:1", "a:b c") == "Basic " + base64.b64encode(b"rs%3A1:a%3Ab%20c").decode()


def test_feed_down_longer_than_grace_fails_closed_then_recovers(published, verifier, mint):
    mono = FakeClock(1000.0)
    feed = RevocationFeed(
        published.url,
        RS_CLIENT_ID,
        RS_CLIENT_SECRET,
        feed_grace_seconds=30,
        background=False,
        monotonic=mono,
    )
    token = mint()
    feed.sync_once()
    published.feed_down = True
    mono.advance(29)
    with pytest.raises(FeedError):
        feed.sync_once()
    verifier.verify(token, feed=feed)  # within grace: last good state still applies
    mono.advance(2)  # 31 s without a successful sync
    with pytest.raises(FeedUnavailable):
        verifier.verify(token, feed=feed)
    assert not feed.healthy
    published.feed_down = False
    feed.sync_once()
    verifier.verify(token, feed=feed)


@pytest.mark.parametrize(
    "body",
    [
        {
            "cursor": "1",
            "epoch": 0,
            "more": False,
            "server_time": 1,
            "entries": [{"kind": "client", "value": "x", "not_after": 1, "exp": 2}],
        },
        {"cursor": "1", "epoch": "1", "more": False, "server_time": 1, "entries": []},
        {"cursor": 1, "epoch": 0, "more": False, "server_time": 1, "entries": []},
        {"cursor": "1", "epoch": 0, "more": "no", "server_time": 1, "entries": []},
        {"cursor": "1", "epoch": 0, "more": False, "entries": []},
        {
            "cursor": "1",
            "epoch": 0,
            "more": False,
            "server_time": 1,
            "entries": [{"kind": "task", "value": "t", "not_after": "1", "exp": 2}],
        },
        {
            "cursor": "1",
            "epoch": 0,
            "more": False,
            "server_time": 1,
            "entries": [{"kind": "task", "value": "t", "exp": 2}],
        },
        {"cursor": "1", "epoch": 0, "more": False, "server_time": 1, "entries": {}},
    ],
)
def test_a_page_not_fully_understood_is_a_failed_sync(published, feed, body):
    published.feed_override = json.dumps(body).encode()
    with pytest.raises(FeedError):
        feed.sync_once()
    assert feed.seconds_since_sync() is None
    assert feed.entry_count() == 0


def test_unknown_kind_applies_nothing_of_its_page(published, feed, mint, verifier):
    token = mint()
    jti = verifier.verify(token).jti
    published.feed_override = json.dumps(
        {
            "cursor": "2",
            "epoch": 0,
            "more": False,
            "server_time": 1,
            "entries": [
                {"kind": "jti", "value": jti, "not_after": 0, "exp": 2**31},
                {"kind": "session", "value": "s", "not_after": 1, "exp": 2**31},
            ],
        }
    ).encode()
    with pytest.raises(FeedError, match="unknown entry kind"):
        feed.sync_once()
    assert feed.entry_count() == 0


def test_duplicate_json_members_are_a_failed_sync(published, feed):
    published.feed_override = (
        b'{"cursor":"1","epoch":0,"epoch":9,"more":false,"server_time":1,"entries":[]}'
    )
    with pytest.raises(FeedError):
        feed.sync_once()


def test_entries_are_forgotten_after_exp_plus_max_leeway(published, verifier, mint):
    now = int(time.time())
    wall = FakeClock(now)
    feed = RevocationFeed(
        published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, background=False, clock=wall
    )
    published.revoke("task", "task-a", not_after=now, exp=now + 100)
    published.revoke("jti", "jti-b", exp=now + 200)
    feed.sync_once()
    assert feed.entry_count() == 2
    wall.t = now + 100 + 60  # a verifier with 60 s leeway could still accept task-a's tokens
    feed.sync_once()
    assert feed.entry_count() == 2
    wall.t = now + 100 + 61
    feed.sync_once()
    assert feed.entry_count() == 1
    wall.t = now + 200 + 61
    feed.sync_once()
    assert feed.entry_count() == 0


def outcome(verifier: ErrandVerifier, token: str, feed: RevocationFeed) -> str:
    """What the verifier says about `token` with `feed` right now."""
    try:
        verifier.verify(token, feed=feed)
    except TokenRevoked:
        return "revoked"
    except FeedUnavailable:
        return "unavailable"
    return "accepted"


def test_background_thread_applies_a_revocation_in_under_a_second(published, verifier, mint):
    token = mint()
    jti = verifier.verify(token).jti
    with RevocationFeed(
        published.url, RS_CLIENT_ID, RS_CLIENT_SECRET
    ) as feed:  # default 0.5 s poll
        assert feed.wait_synced(5)
        verifier.verify(token, feed=feed)
        published.revoke("jti", jti)
        applied = wait_until(
            lambda: outcome(verifier, token, feed) == "revoked", timeout=1.0, interval=0.01
        )
    assert applied, "revocation not applied within 1 s"


def test_first_check_starts_the_thread_and_waits_for_the_first_sync(published, verifier, mint):
    feed = RevocationFeed(published.url, RS_CLIENT_ID, RS_CLIENT_SECRET, poll_interval_seconds=0.05)
    try:
        verifier.verify(mint(), feed=feed)  # no start(): the first check starts it
        assert feed.healthy
    finally:
        feed.stop()


def test_background_fail_closed_and_recovery_in_real_time(published, verifier, mint):
    feed = RevocationFeed(
        published.url,
        RS_CLIENT_ID,
        RS_CLIENT_SECRET,
        poll_interval_seconds=0.05,
        feed_grace_seconds=0.5,
    )
    token = mint()
    with feed:
        assert feed.wait_synced(5)
        verifier.verify(token, feed=feed)
        published.feed_down = True
        closed = wait_until(lambda: outcome(verifier, token, feed) == "unavailable", timeout=3)
        assert closed, "the feed never failed closed"
        published.feed_down = False
        recovered = wait_until(lambda: outcome(verifier, token, feed) == "accepted", timeout=3)
        assert recovered, "the feed never recovered"


def test_configuration_is_checked(published):
    with pytest.raises(ValueError):
        RevocationFeed(published.url, RS_CLIENT_ID, "")
    with pytest.raises(ValueError):
        RevocationFeed(
            published.url,
            RS_CLIENT_ID,
            RS_CLIENT_SECRET,
            poll_interval_seconds=5,
            feed_grace_seconds=5,
        )


def test_status_reveals_no_secret_or_values(published, feed, mint):
    published.revoke("identity", "acme-agent")
    feed.sync_once()
    status = feed.status()
    assert status["healthy"] is True and status["entries"] == 1
    assert "acme-agent" not in json.dumps(status) and RS_CLIENT_SECRET not in json.dumps(status)


def test_offline_only_is_explicit_and_accepts_revoked_tokens(verifier, mint, published):
    # feed=None: nothing is known about revocations; documented as weaker.
    token = mint()
    published.revoke("jti", verifier.verify(token).jti)
    verifier.verify(token, feed=None)
