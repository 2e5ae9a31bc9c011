"""The Lua scripts of broker/store/lua/, read once, at import.

Each script runs with lua/prelude.lua in front of it (the functions several scripts share)
and with the key prefixes of store/keys.py filled in where its text says `{{GRANT}}`,
`{{TASK}}` or `{{IDENT}}`, so no Lua text spells a key prefix. Scripts need those prefixes
because they reach a grant's hash and index keys from an expiry-index member or from the
grant's own fields, keys the caller cannot know in advance to pass as KEYS.

A store registers each script once per client (`client.register_script(SAVE_GRANT)`);
redis-py then calls it by SHA (EVALSHA) and loads it again after a NOSCRIPT, say when
Redis restarted empty."""

from __future__ import annotations

import re
from importlib.resources import files

from broker.store import keys

PLACEHOLDERS = {
    "GRANT": keys.GRANT_PREFIX,
    "TASK": keys.TASK_INDEX_PREFIX,
    "IDENT": keys.IDENTITY_INDEX_PREFIX,
    "CHILDREN": keys.CHILDREN_INDEX_PREFIX,
}
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
SWEEP = load("sweep")
# store/chains.py
SAVE_HOP = load("save_hop")
# store/revocations.py
REVOKE_ALL = load("revoke_all")
REVOKE_MANY = load("revoke_many")
FANOUT_BATCH = load("fanout_batch")
# store/limits.py
HIT_MANY = load("hit_many")
# store/console_sessions.py
CONSOLE_TOUCH = load("console_touch")
# store/approvals.py
APPROVAL_POLL = load("approval_poll")
APPROVAL_DECIDE = load("approval_decide")
APPROVAL_CONSUME = load("approval_consume")
