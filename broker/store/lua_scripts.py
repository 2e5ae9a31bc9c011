"""The Lua scripts of broker/store/lua/, read once, at import.

Each script runs with lua/prelude.lua in front of it (the functions several scripts share).
No script builds a key name: every key it touches comes in KEYS, named by store/keys.py, so
Redis Cluster can route it (a script's keys must share a slot). A placeholder (`{{NAME}}`)
mechanism remains for values filled in at load time; none is defined today.

A store registers each script once per client (`client.register_script(SAVE_GRANT)`);
redis-py then calls it by SHA (EVALSHA) and loads it again after a NOSCRIPT, say when
Redis restarted empty."""

from __future__ import annotations

import re
from importlib.resources import files

PLACEHOLDERS: dict[str, str] = {}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_LEFTOVER = re.compile(r"\{\{|\}\}")
# A prefix lands inside a single-quoted Lua string: nothing in it may end or escape it.
_SAFE_PREFIX = re.compile(r"[A-Za-z0-9:_.-]+")


def read(name: str) -> str:
    """The text of lua/<name>.lua as shipped, placeholders and all."""
    return (files("broker.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def render(text: str) -> str:
    """Fill in every placeholder; an unknown or malformed one is an error, not a typo that
    would send a script to the wrong key."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {match.group(0)} in a Lua script")
        return PLACEHOLDERS[name]

    out = _PLACEHOLDER.sub(fill, text)
    if _LEFTOVER.search(out):
        raise ValueError("a Lua script has an unfilled placeholder")
    return out


def load(name: str) -> str:
    """The prelude and lua/<name>.lua, ready for register_script."""
    return render(read("prelude") + "\n" + read(name))


for _name, _prefix in PLACEHOLDERS.items():
    if not _SAFE_PREFIX.fullmatch(_prefix):
        raise ValueError(f"key prefix for {{{{{_name}}}}} is not a plain Lua string: {_prefix!r}")

# store/grants.py
SAVE_GRANT = load("save_grant")
PREFLIGHT = load("preflight")
ENSURE_EPOCH = load("ensure_epoch")
REVOKE_GRANT = load("revoke_grant")
TASK_TRANSITION = load("task_transition")
# store/chains.py
SAVE_HOP = load("save_hop")
# store/revocations.py
REVOKE_ALL = load("revoke_all")
# store/grant_steps.py
DROP_GRANTS = load("drop_grants")
# store/cluster_grants.py: the grant write, the hop write and a task's move as single-slot steps
CLUSTER_SAVE_IDENTITY = load("cluster_save_identity")
CLUSTER_SAVE_TASK = load("cluster_save_task")
CLUSTER_SAVE_HOP_TASK = load("cluster_save_hop_task")
CLUSTER_SAVE_GLOBAL = load("cluster_save_global")
CLUSTER_TASK_TRANSITION = load("cluster_task_transition")
CLUSTER_TASK_GLOBAL = load("cluster_task_global")
# store/limits.py
HIT_MANY = load("hit_many")
# store/console_sessions.py
CONSOLE_TOUCH = load("console_touch")
# store/approvals.py
APPROVAL_POLL = load("approval_poll")
APPROVAL_DECIDE = load("approval_decide")
APPROVAL_CONSUME = load("approval_consume")
