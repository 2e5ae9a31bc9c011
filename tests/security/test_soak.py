"""The soak, at CI size: scripts/soak.py runs exchanges, introspections, completions and
revocations concurrently against real gunicorn + worker on a private Redis, then checks its
invariants (every active grant audited; no revoked or completed task active; memory back to
baseline after expiry) and exits non-zero if any fails. The full-length run is documented in
docs/security.md; this keeps a short one in every `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_short_soak_holds_every_invariant() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "20", "--settle", "45"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
