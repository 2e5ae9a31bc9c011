"""The audit chain (broker/domain/audit_chain.py): the canonical encoding is injective, and
any single deletion, alteration, reordering or insertion in a sealed export is detected."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.audit_chain import (
    GENESIS,
    Checkpoint,
    Entry,
    canonical,
    jws_digest,
    link,
    verify_chain,
)

texts = st.text(max_size=12)
field_maps = st.dictionaries(texts, texts, max_size=4)
entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 10**13), st.integers(0, 99))


@settings(max_examples=100)
@given(entry_ids, field_maps, entry_ids, field_maps)
def test_canonical_encoding_is_injective(a_id: str, a: Any, b_id: str, b: Any) -> None:
    if (a_id, a) != (b_id, b):
        assert canonical(a_id, a) != canonical(b_id, b)


def sealed(n: int, per_checkpoint: int) -> tuple[list[Entry], list[Checkpoint]]:
    """n entries, sealed in checkpoints of `per_checkpoint`, the last few left unsealed;
    each entry carries the chain value an exporter writes next to it."""
    entries: list[Entry] = []
    h = GENESIS
    for k in range(n):
        fields = {"e": f'{{"event":"x","n":{k}}}'}
        h = link(h, f"{1000 + k}-0", fields)
        entries.append(Entry(f"{1000 + k}-0", fields, h))
    cps: list[Checkpoint] = []
    prev_head, prev_cp = GENESIS, GENESIS
    sealed_upto = n - n % per_checkpoint if n % per_checkpoint else n - 1
    for start in range(0, sealed_upto, per_checkpoint):
        seg = entries[start : min(start + per_checkpoint, sealed_upto)]
        claims = {
            "seq": len(cps) + 1,
            "first_id": seg[0].id,
            "last_id": seg[-1].id,
            "count": len(seg),
            "lost": 0,
            "prev_head": prev_head,
            "head": seg[-1].chain,
            "prev_checkpoint": prev_cp,
        }
        jws = f"jws-{len(cps) + 1}-{seg[-1].chain}"  # signatures are checked elsewhere
        cps.append(Checkpoint(jws, claims))
        prev_head, prev_cp = str(seg[-1].chain), jws_digest(jws)
    return entries, cps


def test_an_untouched_chain_verifies() -> None:
    entries, cps = sealed(10, 3)
    report = verify_chain(entries, cps)
    assert report.ok, report.problems
    assert report.sealed + report.unsealed == 10 and report.sealed == 9


@settings(max_examples=50)
@given(st.integers(2, 14), st.integers(1, 5), st.data())
def test_any_single_change_is_detected(n: int, per: int, data: st.DataObject) -> None:
    entries, cps = sealed(n, per)
    k = data.draw(st.integers(0, n - 1))
    kind = data.draw(st.sampled_from(["delete", "alter", "swap", "insert"]))
    changed = list(entries)
    if kind == "delete":
        if k == n - 1 or (k == 0 and bool(cps) and cps[0].claims["count"] == 1):
            # The newest entry is unsealed (only the live head tells), and removing the whole
            # oldest checkpoint's entries is what retention does: both documented limits.
            return
        del changed[k]
    elif kind == "alter":
        old = changed[k]
        changed[k] = Entry(old.id, {"e": old.fields["e"].replace('"x"', '"y"')}, old.chain)
    elif kind == "swap":
        if k == n - 1:
            k -= 1
        a, b = changed[k], changed[k + 1]
        changed[k], changed[k + 1] = Entry(a.id, b.fields, a.chain), Entry(b.id, a.fields, b.chain)
    else:
        ms = 1000 + k
        changed.insert(k + 1, Entry(f"{ms}-5", {"e": "{}"}, entries[k].chain))
    report = verify_chain(changed, cps)
    assert not report.ok, kind
    assert report.first_bad is not None


def test_the_first_bad_entry_is_named() -> None:
    entries, cps = sealed(9, 3)
    entries[4] = Entry(entries[4].id, {"e": "{}"}, entries[4].chain)
    assert verify_chain(entries, cps).first_bad == entries[4].id


def test_a_missing_checkpoint_and_its_entries_are_detected() -> None:
    entries, cps = sealed(9, 3)
    report = verify_chain(entries[:3] + entries[6:], [cps[0], cps[2]])
    assert not report.ok


def test_retention_may_trim_at_a_checkpoint_boundary_only() -> None:
    entries, cps = sealed(10, 3)
    report = verify_chain(entries[6:], cps[1:])  # checkpoint 1 and its entries are gone
    assert report.ok, report.problems
    assert report.trimmed_checkpoints == 1
    assert not verify_chain(entries[5:], cps[1:]).ok  # mid-checkpoint: not retention


def test_a_lost_count_fails() -> None:
    entries, cps = sealed(6, 3)
    claims = dict(cps[1].claims, lost=2)
    report = verify_chain(entries, [cps[0], Checkpoint(cps[1].jws, claims)])
    assert not report.ok and "gone before they were sealed" in report.problems[0]
