"""One-shot rename of a single Redis's keys from the names before the hash-tagged key scheme
(store/keys.py) to the new ones: `python -m broker.store.key_migration REDIS_URL`.

Run it once, with every broker node and worker of the old version stopped, before starting
the new version (docs/runbook.md, "Upgrading to the hash-tagged key scheme"). It RENAMEs
(atomic, keeps each TTL) and is idempotent: a key already renamed is skipped. A task that
has no owner key (opened before owners were recorded) gets its earliest live grant's
identity as owner, as the old grant write inferred it. Grants keep their jti: one minted
before the upgrade has no bucket prefix, so its hash is renamed into the bucket of its own
jti (store/keys.py grant()), where introspection, revocation and the clean-ups find it
on a single Redis or Sentinel.

It does not move data into a Redis Cluster: a cluster starts empty (docs/runbook.md says what
that means for tokens in flight)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import redis

from broker.store import keys

OLD = "errand:"
# Global keys: old name -> new name.
GLOBALS = {
    OLD + "epoch": keys.EPOCH,
    OLD + "expiry": keys.EXPIRY_INDEX,
    OLD + "audit": keys.AUDIT_STREAM,
    OLD + "completing": keys.COMPLETING,
    OLD + "revocations": keys.REVOCATION_FEED,
    OLD + "epoch:log": keys.EPOCH_LOG,
    OLD + "evidence": keys.EVIDENCE_STREAM,
    OLD + "fanouts": keys.FANOUTS,
    OLD + "keys": keys.SIGNING_KEYS,
    OLD + "keys:version": keys.SIGNING_KEYS_VERSION,
    OLD + "keys:bootstrap": keys.SIGNING_KEYS + ":bootstrap",
    OLD + "identity:state": keys.IDENTITY_STATE,
    OLD + "identity:last-exchange": keys.LAST_EXCHANGE,
    OLD + "tasks:open": keys.TASKS_OPEN,
    OLD + "tasks:completed": keys.TASKS_COMPLETED,
    OLD + "workers:heartbeat": keys.WORKER_HEARTBEATS,
    OLD + "approvals:pending": keys.APPROVALS_PENDING,
}


def _per_entity(old_key: str) -> str | None:
    """The new name of an old per-task, per-identity, per-grant, per-issuer or per-approval
    key. (Console sessions, DPoP proofs, replay entries and rate counters keep their names.)"""
    rest = old_key[len(OLD) :]
    kind, _, value = rest.partition(":")
    if not value:
        return None
    renames: dict[str, Callable[[str], str]] = {
        "grant": keys.grant,
        "task": keys.task_index,
        "task-done": keys.task_tombstone,
        "task-owner": keys.task_owner,
        "task-state": keys.task_state,
        "children": keys.children_index,
        "approval": keys.approval,
        "ident": keys.identity_index,
        "jwks": keys.jwks,
        "fanout": _fanout_progress,
    }
    if kind in renames:
        return str(renames[kind](value))
    if kind == "lock" and value.startswith("jwks:"):
        return keys.jwks_lock(value[len("jwks:") :])
    return None


def old_keys_present(client: Any) -> bool:
    """Whether the old global keys are still there (the migration has not run): a broker
    started then would miss suspensions, signing keys and the epoch, so it refuses."""
    return bool(client.exists(OLD + "epoch", OLD + "identity:state", OLD + "keys"))


def _fanout_progress(epoch: str) -> str:
    return keys.fanout_progress(int(epoch))


def migrate(client: Any) -> dict[str, int]:
    """Rename every old key of `client` (a single Redis); returns counts by outcome."""
    counts = {"renamed": 0, "skipped": 0, "owners": 0}
    for old, new in GLOBALS.items():
        counts[_rename(client, old, new)] += 1
    for raw in list(client.scan_iter(match=OLD + "*", count=1000)):
        old = raw.decode() if isinstance(raw, bytes) else str(raw)
        if old.startswith(OLD + "{") or old in GLOBALS:
            continue  # a new name already, or done above
        renamed = _per_entity(old)
        if renamed is not None:
            counts[_rename(client, old, renamed)] += 1
    for raw in list(client.scan_iter(match=keys.PREFIX + "{t.*}:task:*", count=1000)):
        index = raw.decode() if isinstance(raw, bytes) else str(raw)
        task = index.split(":task:", 1)[1]
        counts["owners"] += _infer_owner(client, task)
    return counts


def _rename(client: Any, old: str, new: str) -> str:
    if old == new or not client.exists(old):
        return "skipped"
    if client.exists(new):
        raise SystemExit(f"both {old} and {new} exist: migrated half-way by hand? stopping")
    client.rename(old, new)
    return "renamed"


def _infer_owner(client: Any, task: str) -> int:
    if client.exists(keys.task_owner(task)):
        return 0
    for jti in client.zrange(keys.task_index(task), 0, -1):
        jti = jti.decode() if isinstance(jti, bytes) else str(jti)
        identity = client.hget(keys.grant(jti), "i")
        if identity:
            # It lives as long as the task's index, which expires with its newest grant.
            ttl = int(client.ttl(keys.task_index(task)))
            client.set(keys.task_owner(task), identity, ex=ttl if ttl > 0 else None)
            return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m broker.store.key_migration REDIS_URL", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(argv[0], decode_responses=True)
    print(migrate(client))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
