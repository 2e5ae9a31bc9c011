"""docs/audit.md names every audit event type the code writes (it cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENT = re.compile(
    r"""(?:"event":\s*|event=|event\s*=\s*|event_name=)["']([a-z_]+\.[a-z_.]+)["']"""
)


def code_event_names() -> set[str]:
    names: set[str] = set()
    for pattern in ("broker/**/*.py", "broker/**/*.lua", "workers/**/*.py"):
        for path in ROOT.glob(pattern):
            names |= set(EVENT.findall(path.read_text()))
    return names


def test_every_event_type_is_documented() -> None:
    names = code_event_names()
    assert {"token.exchange", "grant.expired", "identity.suspended"} <= names
    doc = (ROOT / "docs/audit.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", doc, re.M))
    assert not names - documented, f"event types missing from docs/audit.md: {names - documented}"
