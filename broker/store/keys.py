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

# The audit hash chain (broker/domain/audit_chain.py, broker/store/audit_seal.py).
AUDIT_CHAIN = PREFIX + "audit:chain"  # hash: head, last_id, seq, added, checkpoint digest
# Signed checkpoints, one stream entry each, whose id is the last audit entry id it covers;
# trimmed with the audit stream by the retention setting (the newest trimmed-to one is kept).
AUDIT_CHECKPOINTS = PREFIX + "audit:checkpoints"
AUDIT_KEYS = PREFIX + "audit:keys"  # hash kid -> public JWK of every key that signed one
AUDIT_SEAL_LOCK = PREFIX + "lock:audit-seal"  # one sealer at a time (value: its token)
AUDIT_PROOFS = PREFIX + "audit:proofs"  # hash task -> signed proof that its tokens are dead
# The audit HMAC key when no file or KEK provides one (broker/audit_key.py). No TTL.
AUDIT_HMAC_KEY = PREFIX + "audit:hmac-key"
