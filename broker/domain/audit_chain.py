"""The audit hash chain: the exact construction, and its verification (docs/audit.md).

The audit stream's entry order (Redis stream ids) is authoritative. A sealer
(broker/store/audit_seal.py) reads the entries it has not sealed yet, in order, and extends
a SHA-256 chain over them:

    h_0 = GENESIS (32 zero bytes)
    h_n = SHA-256(h_{n-1} || canonical(entry_id_n, fields_n))

`canonical` is an injective byte encoding of the entry id and every field of the entry (the
stored bytes, not a re-serialisation of the parsed event), so the chain covers any event
type, including ones added later, without code changes here.

Each sealing run that found new entries ends with a checkpoint signed by the broker's evidence
key (the manner of CloudTrail digest files): its sequence number, the first and last entry id
it covers, how many, the chain value before and after them, the SHA-256 of the previous
checkpoint's JWS, and how many entries were added to the stream but gone before the sealer
read them (`lost`). `verify_chain` recomputes all of it from an export and names the first
thing that does not match.

Plain Python (hashlib): the domain may use it, and so can an auditor's copy of the CLI."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
CANONICAL_TAG = b"errand.audit.chain.v1\x00"
CHECKPOINT_TYP = "errand-audit-checkpoint+jwt"


def _item(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    return len(raw).to_bytes(8, "big") + raw


def canonical(entry_id: str, fields: Mapping[str, str]) -> bytes:
    """Tag, field count, then the entry id and each field name and value (sorted by name),
    each prefixed by its byte length: two different entries never encode alike."""
    out = bytearray(CANONICAL_TAG)
    out += len(fields).to_bytes(4, "big")
    out += _item(entry_id)
    for name in sorted(fields):
        out += _item(name)
        out += _item(fields[name])
    return bytes(out)


def link(previous: str, entry_id: str, fields: Mapping[str, str]) -> str:
    """The chain value after one entry (hex)."""
    return hashlib.sha256(bytes.fromhex(previous) + canonical(entry_id, fields)).hexdigest()


def jws_digest(jws: str) -> str:
    """How a checkpoint names the one before it: SHA-256 of its compact JWS."""
    return hashlib.sha256(jws.encode("ascii")).hexdigest()


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id ("ms-seq") as a sortable pair; malformed ids sort first."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return -1, -1


def next_id(entry_id: str) -> str:
    """The smallest stream id after `entry_id` (for XTRIM MINID and exclusive ranges)."""
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq + 1}"


@dataclass(frozen=True)
class Entry:
    id: str
    fields: Mapping[str, str]
    chain: str | None = None  # the chain value the exporter computed, if any


@dataclass(frozen=True)
class Checkpoint:
    jws: str
    claims: Mapping[str, Any]

    @property
    def seq(self) -> int:
        return int(self.claims["seq"])


@dataclass
class ChainReport:
    problems: list[str] = field(default_factory=list)
    first_bad: str | None = None  # the id of the first entry (or checkpoint) found wrong
    checkpoints: int = 0
    sealed: int = 0  # entries covered by a signed checkpoint
    unsealed: int = 0  # entries after the last checkpoint: chained, not signed yet
    trimmed_checkpoints: int = 0  # checkpoints whose entries retention removed
    head: str = GENESIS

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, where: str | None, problem: str) -> None:
        if self.first_bad is None and where is not None:
            self.first_bad = where
        self.problems.append(problem)


def _check_checkpoint_links(checkpoints: Sequence[Checkpoint], report: ChainReport) -> None:
    for before, after in itertools.pairwise(checkpoints):
        where = f"checkpoint {after.seq}"
        if after.seq != before.seq + 1:
            report.fail(where, f"{where}: follows checkpoint {before.seq} (one is missing)")
        if after.claims.get("prev_checkpoint") != jws_digest(before.jws):
            report.fail(where, f"{where}: does not name checkpoint {before.seq} as its previous")
        if after.claims.get("prev_head") != before.claims.get("head"):
            report.fail(where, f"{where}: does not start where checkpoint {before.seq} ended")
    for cp in checkpoints:
        if int(cp.claims.get("lost", 0)) > 0:
            report.fail(
                f"checkpoint {cp.seq}",
                f"checkpoint {cp.seq}: {cp.claims['lost']} entries were added to the stream "
                "and gone before they were sealed (deleted, or trimmed by the stream bound)",
            )


def _localise(segment: Sequence[Entry], start: str) -> str | None:
    """The first entry whose recomputed chain value differs from the one the export recorded."""
    h = start
    for e in segment:
        h = link(h, e.id, e.fields)
        if e.chain is not None and e.chain != h:
            return e.id
    return None


def verify_chain(
    entries: Sequence[Entry],
    checkpoints: Iterable[Checkpoint],
    *,
    head: str | None = None,
) -> ChainReport:
    """Check entries (in their given order) against signature-checked checkpoints.

    The entries may start after retention trimmed older ones, but only at a checkpoint
    boundary; checkpoints entirely before the first entry are counted as trimmed. `head`, if
    given, is the unsigned chain value the broker holds for the unsealed tail."""
    report = ChainReport()
    cps = sorted(checkpoints, key=lambda c: c.seq)
    report.checkpoints = len(cps)
    _check_checkpoint_links(cps, report)
    for before, after in itertools.pairwise(entries):
        if id_key(after.id) <= id_key(before.id):
            report.fail(after.id, f"entry {after.id}: out of order after {before.id}")
            break
    i = 0
    h: str | None = None  # the chain value reached so far (None: no checkpoint yet)
    started = False  # an entry has been matched to a checkpoint
    for cp in cps:
        last, first = str(cp.claims["last_id"]), str(cp.claims["first_id"])
        where = f"checkpoint {cp.seq}"
        if not started and (not entries or id_key(last) < id_key(entries[0].id)):
            # Its entries are older than the first one kept: removed by retention.
            report.trimmed_checkpoints += 1
            h = str(cp.claims["head"])
            continue
        started = True
        start = str(cp.claims["prev_head"])
        segment: list[Entry] = []
        while i < len(entries) and id_key(entries[i].id) <= id_key(last):
            segment.append(entries[i])
            i += 1
        if not segment:
            report.fail(where, f"{where}: its {cp.claims['count']} entries are missing")
            h = str(cp.claims["head"])
            continue
        computed = start
        for e in segment:
            computed = link(computed, e.id, e.fields)
        if segment[0].id != first:
            bad = _localise(segment, start) or segment[0].id
            report.fail(bad, f"{where}: should start at entry {first}, the export has {bad}")
        elif len(segment) != int(cp.claims["count"]) or computed != cp.claims["head"]:
            bad = _localise(segment, start) or segment[-1].id
            report.fail(
                bad,
                f"{where} (entries {first} .. {last}): {len(segment)} entries against "
                f"{cp.claims['count']} sealed, chain value "
                f"{'matches' if computed == cp.claims['head'] else 'differs'}; "
                f"first entry found wrong: {bad}",
            )
        report.sealed += len(segment)
        h = str(cp.claims["head"])
    tail = list(entries[i:])
    tail_start = h if h is not None else GENESIS
    wrong = _localise(tail, tail_start)
    if wrong is not None:
        report.fail(
            wrong, f"entry {wrong}: its chain value does not match (after the last checkpoint)"
        )
    computed = tail_start
    for e in tail:
        computed = link(computed, e.id, e.fields)
    report.unsealed = len(tail)
    report.head = computed
    if head is not None and head != computed:
        report.fail(
            tail[-1].id if tail else None, "the broker's chain head differs from the entries"
        )
    return report
