"""What the operator commands print for people: UTC times in ISO 8601, aligned tables, and
text from the broker made safe for a terminal. `--json` output never goes through here: it
keeps the broker's own values (Unix times as numbers)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def iso_utc(value: Any) -> str:
    """A Unix time (or an ISO 8601 string from the broker) as `2026-12-03T16:03:13Z`;
    "-" for no time. Anything else is shown as it is."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return printable(value)
            if parsed.tzinfo is None:  # a date, or a time the broker wrote without a zone
                return printable(value)
            value = parsed.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return printable(str(value))
    try:
        moment = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return printable(str(value))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def printable(text: Any) -> str:
    """Text for a terminal: control characters (escape sequences included) become `?`, so a
    value written by a caller cannot move the cursor or rewrite what an operator reads."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [[printable(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join(line(r) for r in cells)


def as_number(value: Any) -> Any:
    """A number sent as a string (Redis hashes answer strings) as that number: `"12"` -> 12,
    `"1.5"` -> 1.5; anything else unchanged."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
    return value


def unverified_record_claims(jws: str) -> dict[str, Any]:
    """The payload of a signed revocation record, NOT verified: for listing records only.
    `errand evidence verify` checks the signature against the broker's published keys."""
    try:
        unverified_payload = jws.split(".")[1]
        raw = base64.urlsafe_b64decode(unverified_payload + "=" * (-len(unverified_payload) % 4))
        unverified_claims = json.loads(raw)
    except (IndexError, ValueError, binascii.Error):
        return {}
    return unverified_claims if isinstance(unverified_claims, dict) else {}
