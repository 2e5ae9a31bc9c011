"""`errand audit verify` on an export file: exit 0 when intact, 1 when one entry was
altered (naming it), 2 for a file that is not an export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.domain.audit_chain import CHECKPOINT_TYP, GENESIS, jws_digest, link
from broker.domain.audit_export import export_lines
from broker.tokens.evidence import sign_record
from broker.tokens.keyring import KeyRing
from tests.support.builders import make_key_dir

ISSUER = "https://errand.example"


def write_export(tmp_path: Path, fmt: str) -> Path:
    keyring = KeyRing.from_dir(make_key_dir(tmp_path))
    entries = [(f"{1000 + k}-0", {"e": json.dumps({"event": "x.y", "n": k})}) for k in range(6)]
    h, cps, prev_cp = GENESIS, [], GENESIS
    for start in (0, 3):
        prev_head = h
        for entry_id, fields in entries[start : start + 3]:
            h = link(h, entry_id, fields)
        claims: dict[str, Any] = {
            "jti": f"ckpt_{start}",
            "iat": 1,
            "seq": len(cps) + 1,
            "first_id": entries[start][0],
            "last_id": entries[start + 2][0],
            "count": 3,
            "lost": 0,
            "prev_head": prev_head,
            "head": h,
            "prev_checkpoint": prev_cp,
        }
        jws = sign_record(claims, keyring, ISSUER, typ=CHECKPOINT_TYP)
        cps.append((jws, {**claims, "iss": ISSUER}))
        prev_cp = jws_digest(jws)
    path = tmp_path / f"export.{fmt}"
    lines = export_lines(
        fmt=fmt,
        issuer=ISSUER,
        exported_at=2.0,
        keys=keyring.jwks(),
        checkpoints=cps,
        entries=entries,
        start_head=GENESIS,
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def altered(line: str) -> str:
    """Entry n=3 says n=33; its recorded chain value is left as it was."""
    obj = json.loads(line)
    if "fields" in obj:
        obj["fields"]["e"] = obj["fields"]["e"].replace('"n": 3', '"n": 33')
    else:
        fields = json.loads(obj["errandfields"])
        fields["e"] = fields["e"].replace('"n": 3', '"n": 33')
        obj["errandfields"] = json.dumps(fields)
    return json.dumps(obj)


@pytest.mark.parametrize("fmt", ["jsonl", "cloudevents"])
def test_verify_exit_status(tmp_path: Path, fmt: str, capsys: Any) -> None:
    path = write_export(tmp_path, fmt)
    assert main(["audit", "verify", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK")

    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if '"1003-0"' in line)
    lines[k] = altered(lines[k])
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("TAMPERED") and "first bad: 1003-0" in out

    path.write_text("not an export\n")
    assert main(["audit", "verify", str(path)]) == 2
