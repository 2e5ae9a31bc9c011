"""The operator CLI against the running stack, and `errand config check` on a bad file."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from tests.support.stack import ERRAND, ROOT, errand_cli, introspect, issue

pytestmark = pytest.mark.e2e


def test_cli_with_a_wrong_admin_credential_fails_cleanly(stack, tmp_path):
    wrong = tmp_path / "wrong-admin"
    wrong.write_text("not-the-admin-token-0123456789")
    out = subprocess.run(
        [ERRAND, "grants", "--url", stack.url, "--admin-token-file", str(wrong)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "401 invalid_token" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_revoke_by_jti(stack, dev_issuer, http):
    body = issue(stack, dev_issuer, http, task_id="cli-revoke")
    listed = errand_cli(stack, "grants", "--task", "cli-revoke", "--json")
    (grant,) = json.loads(listed.stdout)["grants"]
    out = errand_cli(stack, "revoke", "--jti", grant["jti"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "revoked 1 grant(s)"
    assert introspect(stack, body["access_token"], http).json() == {"active": False}
    assert errand_cli(stack, "revoke", "--jti", grant["jti"]).stdout.strip() == "revoked 0 grant(s)"


def _check(path) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRAND_")}
    return subprocess.run(
        [ERRAND, "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )


def _config(**issuer: object) -> dict[str, object]:
    base = {"id": "ci", "issuer": "http://127.0.0.1:9", "audience": "errand"}
    base.update(issuer)
    return {"broker": {"issuer": "http://127.0.0.1:8"}, "issuers": [base]}


def test_config_check_reports_a_bad_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(algorithms=["HS256"])))
    out = _check(path)
    assert out.returncode == 1
    assert "issuers.0.algorithms" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_check_reports_a_bad_identifier(tmp_path):
    path = tmp_path / "bad-id.yaml"
    path.write_text(yaml.safe_dump(_config(id="bad id")))
    out = _check(path)
    assert out.returncode == 1
    assert "issuers.0.id" in out.stderr
    assert "Traceback" not in out.stderr
