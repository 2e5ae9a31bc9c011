"""Every Redis key Errand writes, in one place. Each has a TTL or sits in the expiry index.

Identifiers that reach a key (identity ids, owners, task ids, issuer ids) are restricted to
a safe alphabet at the edge; a caller's jti is hashed before it becomes part of a key."""

from __future__ import annotations

import hashlib

PREFIX = "errand:"

EPOCH = PREFIX + "epoch"  # revoke-all cut: grants stamped with an older epoch are dead
EXPIRY_INDEX = PREFIX + "expiry"  # zset "jti task identity owner" -> exp: the clean-up queue
AUDIT_STREAM = PREFIX + "audit"  # bounded stream of audit events
COMPLETING = PREFIX + "completing"  # zset task -> completed_at: completions not yet cleaned up
SWEEP_LOCK = PREFIX + "lock:sweep"
# What resource servers poll to learn of revocations (GET /revocations). Entries are
# trimmed by age once every token they could cover has expired.
REVOCATION_FEED = PREFIX + "revocations"
EPOCH_LOG = PREFIX + "epoch:log"  # hash epoch -> JSON {at, reason, actor, live}
EVIDENCE_STREAM = PREFIX + "evidence"  # signed revocation records
FANOUTS = PREFIX + "fanouts"  # zset epoch -> started_at: revoke-all clean-ups under way
SIGNING_KEYS = PREFIX + "keys"  # hash kid -> JSON record (private part encrypted)
SIGNING_KEYS_VERSION = PREFIX + "keys:version"
# Counted at scrape time (store/gauges.py), each expiring with its newest member and pruned
# by the sweep: tasks by state, and when each worker last reported in (/readyz).
TASKS_OPEN = PREFIX + "tasks:open"  # zset task -> exp of its newest grant (not completed)
TASKS_COMPLETED = PREFIX + "tasks:completed"  # zset task -> when its tombstone expires
WORKER_HEARTBEATS = PREFIX + "workers:heartbeat"  # zset worker name -> unix time of last report


def rate_counter(kind: str, value: str) -> str:
    """kind: addr | issuer | identity | denials. Client addresses are hashed: an IPv6 literal
    or a proxy's value never shapes a key."""
    if kind == "addr":
        value = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:24]
    return f"{PREFIX}rl:{kind}:{value}"


def fanout_progress(epoch: int) -> str:
    return f"{PREFIX}fanout:{epoch}"


# Lua scripts reach a grant's hash and index keys from the grant's own fields; they get
# these three prefixes filled in at load time (store/lua_scripts.py).
GRANT_PREFIX = PREFIX + "grant:"
TASK_INDEX_PREFIX = PREFIX + "task:"  # zset jti -> exp: a task's grants
IDENTITY_INDEX_PREFIX = PREFIX + "ident:"  # zset jti -> exp: an identity's grants


# RFC 8693 delegation (store/chains.py): a grant's hops, zset child jti -> exp, expiring with
# its newest child; revoking a grant revokes every hop below it through these.
CHILDREN_INDEX_PREFIX = PREFIX + "children:"


def children_index(jti: str) -> str:
    return CHILDREN_INDEX_PREFIX + jti


def grant(jti: str) -> str:
    return GRANT_PREFIX + jti


def task_index(task_id: str) -> str:
    return TASK_INDEX_PREFIX + task_id


def task_tombstone(task_id: str) -> str:
    return f"{PREFIX}task-done:{task_id}"


def task_owner(task_id: str) -> str:
    """The identity that opened the task, set once; it expires with the task's latest grant
    or, once the task is complete, with its tombstone."""
    return f"{PREFIX}task-owner:{task_id}"


def task_state(task_id: str) -> str:
    """A task's lifecycle record (hash: s state, d deadline, l labels, c opened at, t changed
    at). Only a task opened with a deadline or labels, or ever suspended, has one; its TTL
    follows the task's grants, deadline, suspension or tombstone (docs/agents.md)."""
    return f"{PREFIX}task-state:{task_id}"


def identity_index(identity_id: str) -> str:
    return IDENTITY_INDEX_PREFIX + identity_id


def replay(issuer_id: str, jti: str) -> str:
    digest = hashlib.sha256(jti.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{PREFIX}replay:{issuer_id}:{digest}"


def jwks(issuer_id: str) -> str:
    return f"{PREFIX}jwks:{issuer_id}"


def jwks_lock(issuer_id: str) -> str:
    return f"{PREFIX}lock:jwks:{issuer_id}"


# Identity lifecycle (broker/domain/inventory.py). One field per identity of the inventory,
# so their size is bounded by the inventory. No TTL, by design: a suspension must not lapse
# by itself, and offboarding is permanent (it is also the audit's answer to "who removed it").
IDENTITY_STATE = PREFIX + "identity:state"  # hash identity -> JSON {state, at, actor, reason}
LAST_EXCHANGE = PREFIX + "identity:last-exchange"  # hash identity -> unix time of last issue


def console_session(session_digest: str) -> str:
    """A web-console session (broker/store/console_sessions.py), under the SHA-256 of its
    cookie's id, never the id itself; it expires with the session's idle timeout."""
    return f"{PREFIX}console:session:{session_digest}"


def dpop_jti(jkt: str, jti: str) -> str:
    """A spent DPoP proof (RFC 9449 §11.1), per key: jkt is a base64url thumbprint we
    computed; the caller's jti is hashed. Expires when the proof's iat leaves the window."""
    digest = hashlib.sha256(jti.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{PREFIX}dpop:{jkt}:{digest}"


# Human approval of high-impact requests (broker/store/approvals.py). An approval's hash
# expires a while after the approval itself, so a late poll still hears `expired_token`;
# the pending index is trimmed by score (the expiry) whenever an approval is created.
APPROVALS_PENDING = PREFIX + "approvals:pending"  # zset approval id -> expires_at


def approval(approval_id: str) -> str:
    return f"{PREFIX}approval:{approval_id}"


# The audit hash chain (broker/domain/audit_chain.py, broker/store/audit_seal.py).
AUDIT_CHAIN = PREFIX + "audit:chain"  # hash: head, last_id, seq, added, checkpoint digest
# Signed checkpoints, one stream entry each, whose id is the last audit entry id it covers;
# trimmed with the audit stream by the retention setting (the newest trimmed-to one is kept).
AUDIT_CHECKPOINTS = PREFIX + "audit:checkpoints"
AUDIT_KEYS = PREFIX + "audit:keys"  # hash kid -> public JWK of every key that signed one
AUDIT_SEAL_LOCK = PREFIX + "lock:audit-seal"  # one sealer at a time (value: its token)
AUDIT_PROOFS = PREFIX + "audit:proofs"  # prefix of the two per-task keys below


def audit_proof(task_id: str) -> str:
    """A task's signed proof that its tokens are dead (domain/task_proof.py); the
    tombstone's TTL."""
    return f"{AUDIT_PROOFS}:{task_id}"


def audit_proof_cover(task_id: str) -> str:
    """Set of the jti HMACs a task's proof covers, gathered before its grants are revoked;
    the tombstone's TTL."""
    return f"{AUDIT_PROOFS}-cover:{task_id}"


# The audit HMAC key when no file or KEK provides one (broker/audit_key.py). No TTL.
AUDIT_HMAC_KEY = PREFIX + "audit:hmac-key"
