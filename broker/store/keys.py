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
             revocation feed, fan-outs, completions, identity states, signing keys, task and
             worker gauges, approvals). Every
             exchange reads the epoch and writes the audit stream and the expiry index here;
- `{t.BBB}`  a task bucket (broker/domain/grant_ids.py): a task's grants, index, tombstone,
             owner, lifecycle record, and the children indexes of its grants (delegation
             hops are minted in their root task's bucket). A grant's jti starts with its
             bucket, so its key follows from the jti;
- `{i.ID}`   an identity: its index of grants;
- `{j.ISS}`  an issuer's JWKS mirror and its fetch lock; `{a.HASH}` a client address's
             authentication-failure counter and audit gate;
- a key only ever used alone (a replay entry, a DPoP proof, a rate counter, a console
  session) has no tag: it lands anywhere.
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
# Counted at scrape time (store/gauges.py), each expiring with its newest member and pruned
# by the sweep: tasks by state, and when each worker last reported in (/readyz). Global:
# a task transition's last step and a grant write's last step add to them.
TASKS_OPEN = GLOBAL + "tasks:open"  # zset task -> exp of its newest grant (not completed)
TASKS_COMPLETED = GLOBAL + "tasks:completed"  # zset task -> when its tombstone expires
WORKER_HEARTBEATS = GLOBAL + "workers:heartbeat"  # zset worker name -> unix time of last report


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


def children_index(jti: str) -> str:
    """RFC 8693 delegation (store/chains.py): a grant's hops, zset child jti -> exp, expiring
    with its newest child; revoking a grant revokes every hop below it through these. In the
    grant's bucket: a hop's jti is minted in its root task's bucket, so a whole chain (its
    grants and children indexes) shares one slot."""
    return f"{_task_group(jti_bucket(jti))}children:{jti}"


def task_state(task_id: str) -> str:
    """A task's lifecycle record (hash: s state, d deadline, l labels, c opened at, t changed
    at). Only a task opened with a deadline or labels, or ever suspended, has one; its TTL
    follows the task's grants, deadline, suspension or tombstone (docs/agents.md)."""
    return f"{_task_group(task_bucket(task_id))}task-state:{task_id}"


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


def console_session(session_digest: str) -> str:
    """A web-console session (broker/store/console_sessions.py), under the SHA-256 of its
    cookie's id, never the id itself; it expires with the session's idle timeout. Used
    alone: no tag."""
    return f"{PREFIX}console:session:{session_digest}"


def dpop_jti(jkt: str, jti: str) -> str:
    """A spent DPoP proof (RFC 9449 §11.1), per key: jkt is a base64url thumbprint we
    computed; the caller's jti is hashed. Expires when the proof's iat leaves the window.
    Used alone (SET NX): no tag."""
    digest = hashlib.sha256(jti.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{PREFIX}dpop:{jkt}:{digest}"


# Human approval of high-impact requests (broker/store/approvals.py). An approval's hash
# expires a while after the approval itself, so a late poll still hears `expired_token`;
# the pending index is trimmed by score (the expiry) whenever an approval is created. Both in
# the global group: a decision changes the hash and the index in one script, and approvals
# are few (humans decide them).
APPROVALS_PENDING = GLOBAL + "approvals:pending"  # zset approval id -> expires_at


def approval(approval_id: str) -> str:
    return f"{GLOBAL}approval:{approval_id}"


# The audit hash chain (broker/domain/audit_chain.py, broker/store/audit_seal.py), with the
# audit stream in the global group: the sealer reads one and writes the others together.
AUDIT_CHAIN = GLOBAL + "audit:chain"  # hash: head, last_id, seq, added, checkpoint digest
# Signed checkpoints, one stream entry each, whose id is the last audit entry id it covers;
# trimmed with the audit stream by the retention setting (the newest trimmed-to one is kept).
AUDIT_CHECKPOINTS = GLOBAL + "audit:checkpoints"
AUDIT_KEYS = GLOBAL + "audit:keys"  # hash kid -> public JWK of every key that signed one
AUDIT_SEAL_LOCK = GLOBAL + "lock:audit-seal"  # one sealer at a time (value: its token)
# A task's proof is written with AUDIT_KEYS in one transaction: global group too.
AUDIT_PROOFS = GLOBAL + "audit:proofs"  # prefix of the two per-task keys below


def audit_proof(task_id: str) -> str:
    """A task's signed proof that its tokens are dead (domain/task_proof.py); the
    tombstone's TTL."""
    return f"{AUDIT_PROOFS}:{task_id}"


def audit_proof_cover(task_id: str) -> str:
    """Set of the jti HMACs a task's proof covers, gathered before its grants are revoked;
    the tombstone's TTL."""
    return f"{AUDIT_PROOFS}-cover:{task_id}"


# The audit HMAC key when no file or KEK provides one (broker/audit_key.py). No TTL.
AUDIT_HMAC_KEY = GLOBAL + "audit:hmac-key"
