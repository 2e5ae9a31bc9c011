"""Every Redis key Errand writes, in one place. Each has a TTL or sits in the expiry index.

Identifiers that reach a key (identity ids, owners, task ids, issuer ids) are restricted to
a safe alphabet at the edge; a caller's jti is hashed before it becomes part of a key.

The key scheme (docs/architecture.md, "Redis key scheme"): Redis Cluster hashes a key by the
text between its first `{` and the next `}` (its hash tag), so keys with the same tag share a
slot, and a Lua script or MULTI may touch several keys only when they share one. The rule,
for every key added here:

- a key that an atomic step (one script, one MULTI) uses together with another carries the
  tag of the group they belong to, and every key a script touches is passed in KEYS (no key
  name is built inside Lua);
- `{g}`      the global group: one per deployment (epoch, expiry index, audit stream,
             revocation feed, fan-outs, completions, identity states, signing keys). Every
             exchange reads the epoch and writes the audit stream and the expiry index here;
- `{t.BBB}`  a task bucket (broker/domain/grant_ids.py): a task's grants, index, tombstone
             and owner. A grant's jti starts with its bucket, so its key follows from the jti;
- `{i.ID}`   an identity: its index of grants;
- `{j.ISS}`  an issuer's JWKS mirror and its fetch lock; `{a.HASH}` a client address's
             authentication-failure counter and audit gate;
- a key only ever used alone (a replay entry, a rate counter) has no tag: it lands anywhere.
Work that spans groups (an exchange on a cluster, bulk revocation, the sweep, the revoke-all
clean-up) is a sequence of single-group steps, each idempotent, ordered so that a stop
between two of them fails closed (docs/architecture.md lists each sequence)."""

from __future__ import annotations

import hashlib

from broker.domain.grant_ids import jti_bucket, task_bucket

PREFIX = "errand:"
GLOBAL = PREFIX + "{g}:"  # the global group's prefix

EPOCH = GLOBAL + "epoch"  # revoke-all cut: grants stamped with an older epoch are dead
EXPIRY_INDEX = GLOBAL + "expiry"  # zset "jti task identity" -> exp: the clean-up queue
AUDIT_STREAM = GLOBAL + "audit"  # bounded stream of audit events
COMPLETING = GLOBAL + "completing"  # zset task -> completed_at: completions not yet cleaned up
SWEEP_LOCK = GLOBAL + "lock:sweep"
# What resource servers poll to learn of revocations (GET /revocations). Entries are
# trimmed by age once every token they could cover has expired.
REVOCATION_FEED = GLOBAL + "revocations"
EPOCH_LOG = GLOBAL + "epoch:log"  # hash epoch -> JSON {at, reason, actor, live}
EVIDENCE_STREAM = GLOBAL + "evidence"  # signed revocation records
FANOUTS = GLOBAL + "fanouts"  # zset epoch -> started_at: revoke-all clean-ups under way
SIGNING_KEYS = GLOBAL + "keys"  # hash kid -> JSON record (private part encrypted)
SIGNING_KEYS_VERSION = GLOBAL + "keys:version"
NO_KEY = GLOBAL + "none"  # passed in KEYS where a script takes an optional key it won't touch


def rate_counter(kind: str, value: str) -> str:
    """kind: addr | issuer | identity | denials. Client addresses are hashed: an IPv6 literal
    or a proxy's value never shapes a key."""
    if kind == "addr":
        value = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:24]
    return f"{PREFIX}rl:{kind}:{value}"


def fanout_progress(epoch: int) -> str:
    return f"{GLOBAL}fanout:{epoch}"


def _task_group(bucket: str) -> str:
    return f"{PREFIX}{{t.{bucket}}}:"


def grant(jti: str) -> str:
    """A grant's hash, in its task's bucket (the jti names it)."""
    return f"{_task_group(jti_bucket(jti))}grant:{jti}"


def task_index(task_id: str) -> str:
    """zset jti -> exp: a task's grants."""
    return f"{_task_group(task_bucket(task_id))}task:{task_id}"


def task_tombstone(task_id: str) -> str:
    return f"{_task_group(task_bucket(task_id))}task-done:{task_id}"


def task_owner(task_id: str) -> str:
    """The identity that opened the task, set once; it expires with the task's latest grant
    or, once the task is complete, with its tombstone."""
    return f"{_task_group(task_bucket(task_id))}task-owner:{task_id}"


def identity_index(identity_id: str) -> str:
    """zset jti -> exp: an identity's grants."""
    return f"{PREFIX}{{i.{identity_id}}}:grants"


def replay(issuer_id: str, jti: str) -> str:
    digest = hashlib.sha256(jti.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{PREFIX}replay:{issuer_id}:{digest}"


def jwks(issuer_id: str) -> str:
    return f"{PREFIX}{{j.{issuer_id}}}:jwks"


def jwks_lock(issuer_id: str) -> str:
    return f"{PREFIX}{{j.{issuer_id}}}:lock"


def auth_failures(address_hash: str) -> tuple[str, str]:
    """A client address's authentication-failure counter and its audit gate (one script)."""
    return f"{PREFIX}{{a.{address_hash}}}:authfail", f"{PREFIX}{{a.{address_hash}}}:authaudit"


# Identity lifecycle (broker/domain/inventory.py). One field per identity of the inventory,
# so their size is bounded by the inventory. No TTL, by design: a suspension must not lapse
# by itself, and offboarding is permanent (it is also the audit's answer to "who removed it").
IDENTITY_STATE = GLOBAL + "identity:state"  # hash identity -> JSON {state, at, actor, reason}
LAST_EXCHANGE = GLOBAL + "identity:last-exchange"  # hash identity -> unix time of last issue
