"""`errand policy check` (for a policy repository's CI) and `errand policy explain`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from broker.cli import main
from tests.support.builders import UNIT_ISSUER, config_dict, gha_token

ROOT = Path(__file__).resolve().parents[3]
PAY = "https://payments.acme.example"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "config" / "policies", tmp_path / "policies")
    raw = config_dict(UNIT_ISSUER)
    raw["identities"][0]["allow"]["audiences"].append(PAY)
    raw["identities"][0]["allow"]["scopes"] += ["pay:read", "pay:refund"]
    raw["audiences"] = [
        {"id": PAY, "scopes": {"read": ["pay:read"], "high_impact": ["pay:refund"]}}
    ]
    raw["policy"] = {"dir": "policies"}
    path = tmp_path / "errand.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_check_passes_and_fails_with_a_clear_message(config_file: Path, capsys) -> None:
    assert main(["policy", "check", "--config", str(config_file)]) == 0
    assert "OK (4 policies" in capsys.readouterr().out
    bad = config_file.parent / "other"
    shutil.copytree(config_file.parent / "policies", bad)
    (bad / "team.cedar").write_text('@id("x") permit (principal, action, resource) when { 1 };')
    assert main(["policy", "check", "--config", str(config_file), "--dir", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "team.cedar" in err and "validate" in err


def test_explain_names_the_deciding_policies(config_file: Path, capsys) -> None:
    base = ["policy", "explain", "--config", str(config_file), "--audience", PAY, "--json"]
    assert main([*base, "--identity", "acme-deploy", "--scope", "pay:read"]) == 0
    allowed = json.loads(capsys.readouterr().out)
    assert allowed["decision"] == "allow" and allowed["policies"] == ["baseline-read"]
    refund = [*base, "--identity", "acme-deploy", "--scope", "pay:refund"]
    assert main([*refund, "--task-id", "t1", "--purpose", "refund"]) == 2
    pending = json.loads(capsys.readouterr().out)
    assert pending["decision"] == "approval_required"
    assert pending["policies"] == ["baseline-high-impact-needs-approval"]
    assert main(refund) == 2  # no task named: the scope classes refuse before the policy
    assert json.loads(capsys.readouterr().out)["deny_class"] == "scope_class"


def test_explain_reads_a_subject_token(config_file: Path, tmp_path: Path, issuer_key, capsys):
    token = tmp_path / "token"
    token.write_text(gha_token(issuer_key, UNIT_ISSUER, now=1_800_000_000))
    args = ["policy", "explain", "--config", str(config_file), "--token-file", str(token)]
    assert main([*args, "--audience", PAY, "--scope", "pay:read"]) == 0
    out = capsys.readouterr().out
    assert "decision: allow" in out and "identity: acme-deploy" in out
