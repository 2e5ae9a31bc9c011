"""Grant ids (the jti of our tokens) that carry their task's bucket.

A task's grants, its index, tombstone and owner live together in one Redis Cluster slot, so
that each atomic step on a task is one script on one node (docs/architecture.md, "Redis key
scheme"). The slot is chosen by the task's bucket: a number in [0, TASK_BUCKETS) derived
from the task id. A new jti starts with that bucket ("3a7_" then 22 base64url characters), so
the grant's key is found from the jti alone, by anyone: introspection, an operator's
`errand revoke --jti JTI`, a clean-up job that read an identity's index.

Plain Python, no Redis: the domain mints the jti, the store (broker/store/keys.py) reads it."""

from __future__ import annotations

import hashlib
import re
import secrets

# Fixed forever: changing it moves every task to another bucket. 1024 buckets spread tasks
# over a cluster's primaries evenly enough (±10 % at 3 primaries, ±25 % at 16) and keep the
# per-bucket sweeps cheap.
TASK_BUCKETS = 1024
_TAGGED = re.compile(r"([0-9a-f]{3})_[A-Za-z0-9_-]+")


def task_bucket(task_id: str) -> str:
    """The bucket of a task: three hex digits, from SHA-256 of the task id."""
    digest = hashlib.sha256(task_id.encode("utf-8", "replace")).digest()
    return format(int.from_bytes(digest[:4], "big") % TASK_BUCKETS, "03x")


def new_grant_id(task_id: str) -> str:
    """A fresh jti in the task's bucket: 128 random bits after the bucket."""
    return f"{task_bucket(task_id)}_{secrets.token_urlsafe(16)}"


def jti_bucket(jti: str) -> str:
    """The bucket a jti names; a jti without one (tokens minted before buckets, test
    fixtures) falls in the bucket of its own text, which is stable but is not its task's."""
    match = _TAGGED.fullmatch(jti)
    if match and int(match.group(1), 16) < TASK_BUCKETS:
        return match.group(1)
    return task_bucket(jti)
