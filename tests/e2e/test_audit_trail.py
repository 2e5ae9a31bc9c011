"""The audit trail end to end on the session's gunicorn + RQ worker stack: exchanges and a
completion; an export (sealed by the broker first) verifies, a tampered one does not; the
task's proof is fetched and verified offline; search by identity and `audit hash` find the
exchanges."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.support.clocks import wait_until
from tests.support.stack import ERRAND, errand_cli, issue

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ERRAND, *args], capture_output=True, text=True, timeout=30)


def test_audit_trail_export_verify_proof_search_hash(stack, dev_issuer, http, tmp_path: Path):
    task = "task-audit-" + secrets.token_hex(4)
    tokens = [issue(stack, dev_issuer, http, task_id=task)["access_token"] for _ in range(2)]
    done = http.post(
        stack.url + "/tasks/complete",
        headers={"Authorization": f"Bearer {tokens[0]}"},
        timeout=10,
    )
    assert done.status_code == 200, done.text

    # The worker's clean-up signs the proof once every grant is revoked.
    proof_file = tmp_path / "proof.json"
    assert wait_until(
        lambda: errand_cli(stack, "audit", "proof", task, "--out", str(proof_file)).returncode == 0,
        timeout=10.0,
    ), "no proof for the completed task"
    checked = offline("audit", "verify-proof", str(proof_file), "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    claims = json.loads(checked.stdout)["claims"]
    assert (claims["task"], claims["state"], claims["grant_count"]) == (task, "completed", 2)

    # Export (the broker seals first) and verify; one field changed is detected.
    export = tmp_path / "audit.jsonl"
    out = errand_cli(stack, "audit", "export", "-o", str(export))
    assert out.returncode == 0, out.stderr
    assert errand_cli(stack, "audit", "verify", str(export)).returncode == 0
    lines = export.read_text().splitlines()
    for n, line in enumerate(lines):
        entry = json.loads(line)
        if "fields" in entry and task in entry["fields"].get("e", ""):
            event = json.loads(entry["fields"]["e"])
            event["identity"] = "someone-else"
            entry["fields"]["e"] = json.dumps(event)
            lines[n] = json.dumps(entry)
            break
    else:
        pytest.fail("the task's events are not in the export")
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    bad = errand_cli(stack, "audit", "verify", str(tampered))
    assert bad.returncode == 1, bad.stdout + bad.stderr

    # Search by identity, and find a known token's exchange by its HMAC.
    exchanged = [
        json.loads(json.loads(line)["fields"]["e"])
        for line in export.read_text().splitlines()
        if '"fields"' in line and task in line and "token.exchange" in line
    ]
    identity = exchanged[0]["identity"]
    found = errand_cli(stack, "audit", "search", "--identity", identity, "--json")
    assert found.returncode == 0, found.stderr
    events = [e for e in json.loads(found.stdout) if e.get("task") == task]
    assert any(e["event"] == "token.exchange" for e in events)
    hashed = subprocess.run(
        [
            ERRAND,
            "audit",
            "hash",
            "--json",
            "--url",
            stack.url,
            "--admin-token-file",
            str(stack.admin_token_file),
        ],
        input=tokens[1],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert hashed.returncode == 0, hashed.stderr
    jti_hmac = json.loads(hashed.stdout)["token_jti_hmac"]
    assert jti_hmac in claims["grants"]
    assert any(e.get("jti_hmac") == jti_hmac and e["event"] == "token.exchange" for e in events)
