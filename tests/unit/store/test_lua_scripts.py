"""The Lua scripts of broker/store/lua/: shipped with the package, every key in KEYS (Redis
Cluster routes a script by them), the shared prelude in front of each, and called by SHA
with a reload after NOSCRIPT."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import fakeredis
import pytest

from broker.store import keys, lua_scripts
from broker.store.grants import RedisGrants

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = {
    "save_grant": lua_scripts.SAVE_GRANT,
    "preflight": lua_scripts.PREFLIGHT,
    "ensure_epoch": lua_scripts.ENSURE_EPOCH,
    "revoke_grant": lua_scripts.REVOKE_GRANT,
    "task_transition": lua_scripts.TASK_TRANSITION,
    "revoke_all": lua_scripts.REVOKE_ALL,
    "drop_grants": lua_scripts.DROP_GRANTS,
    "cluster_save_identity": lua_scripts.CLUSTER_SAVE_IDENTITY,
    "cluster_save_task": lua_scripts.CLUSTER_SAVE_TASK,
    "cluster_save_global": lua_scripts.CLUSTER_SAVE_GLOBAL,
    "cluster_save_hop_task": lua_scripts.CLUSTER_SAVE_HOP_TASK,
    "cluster_task_transition": lua_scripts.CLUSTER_TASK_TRANSITION,
    "cluster_task_global": lua_scripts.CLUSTER_TASK_GLOBAL,
    "hit_many": lua_scripts.HIT_MANY,
    "console_touch": lua_scripts.CONSOLE_TOUCH,
    "approval_poll": lua_scripts.APPROVAL_POLL,
    "approval_decide": lua_scripts.APPROVAL_DECIDE,
    "approval_consume": lua_scripts.APPROVAL_CONSUME,
    "save_hop": lua_scripts.SAVE_HOP,
}


def shipped() -> dict[str, str]:
    """Every .lua file of the installed package, by name, as shipped."""
    folder = files("broker.store") / "lua"
    return {
        f.name.removesuffix(".lua"): f.read_text(encoding="utf-8")
        for f in folder.iterdir()
        if f.name.endswith(".lua")
    }


def test_the_installed_package_finds_every_script() -> None:
    assert set(shipped()) == {*SCRIPTS, "prelude"}


def test_no_lua_text_spells_a_key_prefix() -> None:
    for name, text in shipped().items():
        assert keys.PREFIX not in text, name


def test_every_script_runs_with_the_prelude() -> None:
    prelude = lua_scripts.render(lua_scripts.read("prelude"))
    for name, text in SCRIPTS.items():
        assert text.startswith(prelude), name
        assert "{{" not in text and "}}" not in text, name


def test_every_key_a_script_touches_comes_in_keys() -> None:
    """No key name is built inside Lua: Redis Cluster must see every key in KEYS."""
    for name, text in shipped().items():
        # hit_many loops over KEYS (`for i, key in ipairs(KEYS)`)
        for command, first in re.findall(r"redis\.call\('(\w+)',?\s*([^,)]*)", text):
            if command != "TIME" and not (name == "hit_many" and first == "key"):
                assert re.fullmatch(r"KEYS\[[^\]]+\]", first.strip()), (name, command, first)


def test_every_script_names_its_keys_and_arguments() -> None:
    for name, text in shipped().items():
        if name != "prelude":
            assert "KEYS" in text and "ARGV" in text, name
            assert "Redis does not roll a script back" in text, name  # and why that is safe


def test_only_the_revocation_scripts_delete_a_grant() -> None:
    for name, text in shipped().items():
        if name not in ("drop_grants", "revoke_grant"):
            assert "'DEL'" not in text, name


def test_an_unknown_or_unfilled_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        lua_scripts.render("redis.call('GET', '{{OWNER}}' .. x)")
    with pytest.raises(ValueError, match="unfilled"):
        lua_scripts.render("redis.call('GET', '{{ GRANT }}' .. x)")


def test_a_script_is_loaded_again_after_redis_forgot_it(clock) -> None:
    r = fakeredis.FakeStrictRedis(server=fakeredis.FakeServer(), decode_responses=True)
    grants = RedisGrants(r, audit_maxlen=100)
    epoch = grants.ensure_epoch()
    r.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
    assert grants.ensure_epoch() == epoch


@pytest.mark.slow  # runs the build in a new Python process
def test_the_package_data_ships_the_scripts(tmp_path: Path) -> None:
    """What `pip install .` copies: build_py with the project's own configuration."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "broker", tmp_path / "broker", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path / "out"
    setup = "from setuptools import setup; setup()"
    subprocess.run(
        [sys.executable, "-c", setup, "-q", "build_py", "--build-lib", str(out)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    built = {p.stem for p in (out / "broker" / "store" / "lua").glob("*.lua")}
    assert built == {*SCRIPTS, "prelude"}
    # and the web console's templates (broker/http/console/templates)
    templates = out / "broker" / "http" / "console" / "templates" / "console"
    assert (templates / "base.html").is_file() and (templates / "login.html").is_file()
