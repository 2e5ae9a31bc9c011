"""Key records written before records were authenticated (only the private key sealed, with
the KEK itself) are re-sealed in the authenticated format on load, once, and only when they
are consistent; afterwards the old format is refused, so it cannot be used to strip a
record's authentication. A node never takes back a removal it has seen."""

from __future__ import annotations

import base64
import json

import pytest

from broker.tokens.keyrecord import RECORD_VERSION, new_kek
from broker.tokens.keyring import KeyError_
from tests.support.keyrecords import LEAD, kids, legacy_record, node

pytestmark = pytest.mark.regression


def test_consistent_old_records_are_resealed_on_load(store, kek, clock) -> None:
    active_kid, active = legacy_record(kek, clock.now() - 100)
    gone_kid, gone = legacy_record(kek, clock.now() - 200, removed=True)
    store.raw = {active_kid: active, gone_kid: gone}
    ring = node(store, kek, clock)
    assert ring.active.kid == active_kid
    assert kids(ring) == {active_kid}  # the removed key stays removed
    for text in store.raw.values():
        assert json.loads(text)["v"] == RECORD_VERSION and "mac" in json.loads(text)
    assert json.loads(store.raw[gone_kid])["removed"] is True
    ring.rotate()  # and rotation carries on in the new format
    clock.advance(LEAD + 1)
    assert node(store, kek, clock).active.kid != active_kid


def test_inconsistent_old_records_are_not_migrated(store, kek, clock) -> None:
    good_kid, good = legacy_record(kek, clock.now())
    foreign_kid, foreign = legacy_record(base64.b64decode(new_kek()), clock.now())
    other = json.loads(legacy_record(kek, clock.now())[1])["public_jwk"]
    swapped_kid, swapped = legacy_record(kek, clock.now(), public_jwk=other)
    store.raw = {good_kid: good, foreign_kid: foreign, swapped_kid: swapped}
    ring = node(store, kek, clock)
    assert kids(ring) == {good_kid}
    refused = {s["kid"] for s in ring.status() if s["state"] == "refused"}
    assert refused == {foreign_kid, swapped_kid}


def test_old_format_is_refused_once_records_are_authenticated(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    old = ring.active.kid
    ring.rotate(emergency=True)
    # Strip the authentication from the removed key's record and flip it back.
    record = json.loads(store.raw[old])
    del record["v"], record["mac"]
    record["removed"] = False
    store.raw[old] = json.dumps(record)
    planted_kid, planted = legacy_record(kek, clock.now())  # even a consistent one
    store.raw[planted_kid] = planted
    fresh = node(store, kek, clock)
    assert old not in kids(fresh) and planted_kid not in kids(fresh)
    assert fresh.get(old) is None and fresh.active.kid not in (old, planted_kid)


def test_old_records_alone_after_a_wipe_are_not_migrated_by_a_node_that_knew_them(
    store, kek, clock
) -> None:
    kid, text = legacy_record(kek, clock.now())
    store.raw = {kid: text}
    ring = node(store, kek, clock)
    assert ring.active.kid == kid
    new_kid = ring.rotate(emergency=True)["kid"]
    assert ring.active.kid == new_kid
    store.raw = {kid: text}  # every authenticated record deleted, the old copy written back
    # This node refuses to migrate a key it saw authenticated, and keeps its last good state.
    # (A node started afterwards cannot tell: see the runbook on rollback of Redis.)
    assert kid not in kids(ring) and ring.get(kid) is None
    assert ring.active.kid == new_kid
    assert store.raw == {kid: text}


def test_an_older_authentic_copy_does_not_undo_a_removal_this_node_saw(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    old = ring.active.kid
    before = store.raw[old]  # authentic, removed: false
    ring.rotate(emergency=True)
    assert old not in kids(ring)
    store.raw[old] = before  # replayed
    assert old not in kids(ring) and ring.get(old) is None


def test_a_record_stored_under_another_kid_is_refused(store, kek, clock) -> None:
    ring = node(store, kek, clock)
    first = ring.active.kid
    ring.rotate()
    store.raw["someone-elses-kid"] = store.raw[first]
    fresh = node(store, kek, clock)
    assert "someone-elses-kid" not in kids(fresh)
    assert {s["kid"]: s["state"] for s in fresh.status()}["someone-elses-kid"] == "refused"


def test_only_refused_records_means_no_key_and_no_new_key(store, kek, clock) -> None:
    foreign_kid, foreign = legacy_record(base64.b64decode(new_kek()), clock.now())
    store.raw = {foreign_kid: foreign}
    with pytest.raises(KeyError_, match="refused"):
        node(store, kek, clock).active  # noqa: B018
    assert list(store.raw) == [foreign_kid]
