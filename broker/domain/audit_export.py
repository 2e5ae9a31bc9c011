"""Audit exports, as JSON lines or CloudEvents 1.0 (structured mode, one JSON per line), and
their offline verification (`errand audit verify`, docs/audit.md).

An export is a header line (issuer, time, the public keys that signed checkpoints), the
signed checkpoints, then the entries oldest first. Every entry carries its stream `fields`
verbatim (what the chain covers) and the chain value after it, so a changed export names its
first bad entry; the parsed `event` next to them is for reading only and is not trusted."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.domain.audit_chain import (
    CHECKPOINT_TYP,
    GENESIS,
    ChainReport,
    Checkpoint,
    Entry,
    id_key,
    link,
    verify_chain,
)
from broker.tokens.evidence import EvidenceInvalid, verify_record

EXPORT_KIND = "errand.audit.export"
FORMATS = ("jsonl", "cloudevents")
CE_TYPE_PREFIX = "dev.errand."


def _event_of(fields: Mapping[str, str]) -> dict[str, Any]:
    try:
        event = json.loads(fields.get("e", "{}"))
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _rfc3339(ts: Any, entry_id: str) -> str:
    try:
        seconds = float(ts)
    except (TypeError, ValueError):
        seconds = id_key(entry_id)[0] / 1000
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _dump(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def export_lines(
    *,
    fmt: str,
    issuer: str,
    exported_at: float,
    keys: Mapping[str, Any],
    checkpoints: Iterable[tuple[str, Mapping[str, Any]]],
    entries: Iterable[tuple[str, Mapping[str, str]]],
    start_head: str,
) -> Iterator[str]:
    """The export, one line each (no newline). `checkpoints`: (JWS, its claims) oldest
    first; `start_head`: the chain value before the first entry."""
    header = {
        "kind": EXPORT_KIND,
        "version": 1,
        "issuer": issuer,
        "exported_at": exported_at,
        "keys": dict(keys),
    }
    source = issuer.rstrip("/") + "/audit"
    if fmt == "cloudevents":
        yield _dump(_cloudevent("export", source, exported_at, "", header, "export"))
    else:
        yield _dump(header)
    for jws, claims in checkpoints:
        body = {"kind": "checkpoint", "seq": claims["seq"], "jws": jws}
        if fmt == "cloudevents":
            ce = _cloudevent(
                f"checkpoint-{claims['seq']}",
                source,
                claims.get("iat"),
                "",
                body,
                "audit.checkpoint",
            )
            yield _dump(ce)
        else:
            yield _dump(body)
    h = start_head
    for entry_id, fields in entries:
        h = link(h, entry_id, fields)
        event = _event_of(fields)
        if fmt == "cloudevents":
            ce = _cloudevent(
                entry_id,
                source,
                event.get("ts"),
                str(event.get("task") or event.get("identity") or ""),
                event,
                str(event.get("event", "unknown")),
            )
            ce["errandchain"] = h
            ce["errandfields"] = _dump(fields)
            yield _dump(ce)
        else:
            yield _dump(
                {
                    "kind": "entry",
                    "id": entry_id,
                    "fields": dict(fields),
                    "chain": h,
                    "event": event,
                }
            )


def _cloudevent(
    ce_id: str, source: str, ts: Any, subject: str, data: Mapping[str, Any], name: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": ce_id,
        "source": source,
        "type": CE_TYPE_PREFIX + name,
        "time": _rfc3339(ts, ce_id if "-" in ce_id else "0-0"),
        "datacontenttype": "application/json",
        "data": dict(data),
    }
    if subject:
        out["subject"] = subject
    return out


# -- reading and verifying an export ---------------------------------------------------------
class ExportUnreadable(Exception):
    """Not an audit export (usage error, exit status 2)."""


@dataclass
class ParsedExport:
    issuer: str = ""
    keys: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    checkpoints: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


def parse_export(lines: Iterable[str]) -> ParsedExport:
    out = ParsedExport()
    seen_header = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise ExportUnreadable(f"line {n}: not JSON") from err
        if not isinstance(obj, dict):
            raise ExportUnreadable(f"line {n}: not a JSON object")
        if obj.get("specversion"):  # CloudEvents: the same records, wrapped
            if (
                obj.get("type") == CE_TYPE_PREFIX + "export"
                or obj.get("type") == CE_TYPE_PREFIX + "audit.checkpoint"
            ):
                obj = obj.get("data") or {}
            else:
                try:
                    fields = json.loads(obj["errandfields"])
                except (KeyError, TypeError, ValueError) as err:
                    raise ExportUnreadable(f"line {n}: a CloudEvent without errandfields") from err
                obj = {
                    "kind": "entry",
                    "id": obj.get("id"),
                    "fields": fields,
                    "chain": obj.get("errandchain"),
                }
        kind = obj.get("kind")
        if kind == EXPORT_KIND:
            seen_header = True
            out.issuer = str(obj.get("issuer", ""))
            out.keys = obj.get("keys") or {"keys": []}
        elif kind == "checkpoint":
            out.checkpoints.append(str(obj.get("jws", "")))
        elif kind == "entry":
            fields = obj.get("fields")
            if not isinstance(fields, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
            ):
                raise ExportUnreadable(f"line {n}: an entry without string fields")
            chain = obj.get("chain")
            out.entries.append(
                Entry(str(obj.get("id")), fields, chain if isinstance(chain, str) else None)
            )
        else:
            raise ExportUnreadable(f"line {n}: unknown record kind {str(kind)[:40]!r}")
    if not seen_header:
        raise ExportUnreadable("no export header: not an errand audit export")
    return out


def verify_export(
    export: ParsedExport, *, jwks: Mapping[str, Any] | None = None, issuer: str | None = None
) -> ChainReport:
    """Check every checkpoint's signature (against `jwks`, else the keys the export carries)
    and then the chain. Problems found in signatures come first."""
    keys = dict(jwks) if jwks is not None else export.keys
    iss = issuer or export.issuer
    bad_signatures = ChainReport()
    cps: list[Checkpoint] = []
    for jws in export.checkpoints:
        try:
            claims = verify_record(jws, keys, iss, typ=CHECKPOINT_TYP)
        except EvidenceInvalid as err:
            bad_signatures.fail("a checkpoint", f"a checkpoint's signature does not verify: {err}")
            continue
        cps.append(Checkpoint(jws, claims))
    report = verify_chain(export.entries, cps)
    if bad_signatures.problems:
        report.problems[:0] = bad_signatures.problems
        report.first_bad = bad_signatures.first_bad
    return report


def start_head(first_entry: str | None, checkpoints: Sequence[Mapping[str, Any]]) -> str:
    """The chain value before `first_entry`: the head of the last checkpoint that ends
    before it, else the first checkpoint's starting value, else GENESIS."""
    before = [
        c for c in checkpoints if first_entry is None or id_key(c["last_id"]) < id_key(first_entry)
    ]
    if before:
        return str(before[-1]["head"])
    return str(checkpoints[0]["prev_head"]) if checkpoints else GENESIS
