"""Policy files reload with the configuration; a bad policy keeps the running policies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from broker.config import load_config
from broker.reload import ConfigReloader
from tests.support.builders import UNIT_ISSUER, config_dict, fake_services

ROOT = Path(__file__).resolve().parents[3]


def test_a_failed_policy_reload_keeps_the_old_policies(tmp_path: Path, key_dir, clock) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "config" / "policies", policies)
    raw = config_dict(UNIT_ISSUER)
    raw["policy"] = {"dir": "policies"}  # relative to the configuration file
    path = tmp_path / "errand.yaml"
    path.write_text(yaml.safe_dump(raw))
    svc = fake_services(load_config(path), key_dir, clock=clock)
    running = svc.config.runtime_policy
    assert running is not None
    reloader = ConfigReloader(svc, path)  # type: ignore[arg-type]

    team = policies / "team.cedar"
    team.write_text('@id("broken") permit (principal, action, resource) when { context.nope };')
    status = reloader.reload_now()
    assert status["ok"] is False and "team.cedar" in status["error"]
    assert svc.config.runtime_policy is running  # the old policies still decide

    team.write_text('@id("team-ok") forbid (principal, action, resource) when { context.dpop };')
    os.utime(team, ns=(1, 2))  # a changed stamp, whatever the file system's resolution
    reloader.maybe_reload()  # noticed by the periodic check, not only when forced
    assert reloader.status["ok"] is True
    assert svc.config.runtime_policy is not running
    assert svc.config.runtime_policy.count == running.count + 1
