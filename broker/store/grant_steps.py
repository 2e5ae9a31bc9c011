"""Work on many grants as a sequence of single-slot steps: bulk revocation, the revoke-all
clean-up, the expiry sweep, the revocation of the delegation hops below a revoked grant, and
(on a cluster) the revocation of one grant.

A grant's keys sit in three groups (store/keys.py): its hash and task index in its task's
bucket, its identity's index, and its expiry-index member in the global group. Redis Cluster
runs a script or MULTI on one slot only, so these operations run, on every topology, as:

1. read the grants' fields (a pipeline; reads only);
2. publish what must be heard (revocation feed entries, audit events) in the global group,
   one MULTI, *before* anything is dropped: a stop after this step leaves live grants that
   the retry of the same call drops, never a dropped grant that nobody was told about;
3. per task bucket, lua/drop_grants.lua deletes each grant still there that passes the
   filter (the first write that matters: the token is dead after it);
4. the leftovers: identity-index and expiry-index entries (plain ZREMs, idempotent). A stop
   before them leaves entries scored by exp that every reader filters by score and the
   sweep removes.
Each step is idempotent, so a caller that fails half-way (StoreUnavailable) is retried
whole.

Delegation hops (store/chains.py) are revoked with the grant above them by `cascade`, level
by level, each level once its parents are dropped: lua/save_hop.lua (or its cluster step)
re-checks every link above a new hop in the chain's slot, so once a parent is gone no hop can
join its children index, and reading that index then gives every child there will ever be.
A hop, its ancestors and their children indexes share the root task's bucket (the hop's jti
is minted there). A stop half-way leaves hops whose introspection already answers inactive
(a link above is gone, domain/introspection.py) and that the repeat of the call revokes and
publishes: the children indexes are deleted only once their children are dropped."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from broker.domain.audit_hmac import jti_hmac
from broker.domain.grant_ids import jti_bucket
from broker.store import keys
from broker.store.connection import NO_WAIT, ReplicaWait

DROPPED, KEPT, GONE = 2, 1, 0


@dataclass(frozen=True)
class Ref:
    """One grant as an index names it."""

    jti: str
    task: str
    identity: str
    exp: str = ""

    @property
    def member(self) -> str:
        return f"{self.jti} {self.task} {self.identity}"


def parse_member(member: str) -> Ref | None:
    """A Ref from an expiry-index member "jti task identity"; None for a malformed one."""
    parts = member.split(" ")
    return Ref(parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def read_refs(client: Any, jtis: Sequence[str]) -> dict[str, Ref]:
    """Step 1: the live grants among `jtis`, with their task, identity and exp."""
    pipe = client.pipeline(transaction=False)
    for jti in jtis:
        pipe.hmget(keys.grant(jti), "t", "i", "e")
    out: dict[str, Ref] = {}
    for jti, (task, identity, exp) in zip(jtis, pipe.execute(), strict=True):
        if task and identity:
            out[jti] = Ref(jti, str(task), str(identity), str(exp or ""))
    return out


def publish(
    client: Any,
    *,
    feed: Iterable[tuple[str, ...]] = (),
    audit: Iterable[str] = (),
    audit_maxlen: str = "10000",
    completing: tuple[str, int] | None = None,
) -> None:
    """Step 2: feed entries (kind, value, not_after, exp[, parent]: a delegation hop names
    the grant above it), audit events (JSON) and a task queued for clean-up, in one MULTI on
    the global group."""
    events = list(audit)
    if events:
        # A MULTI does not stop at a failed command: no feed entry or clean-up without its
        # audit event (store_errors answers AuditUnavailable, docs/audit.md).
        kind = client.type(keys.AUDIT_STREAM)
        if kind not in ("none", "stream", b"none", b"stream"):
            raise redis.ResponseError(f"ERRAND_AUDIT {keys.AUDIT_STREAM} holds a {kind}")
    pipe = client.pipeline(transaction=True)
    for kind, value, not_after, exp, *parent in feed:
        fields = {"k": kind, "v": value, "n": not_after, "x": exp}
        if parent:
            fields["p"] = parent[0]
        pipe.xadd(keys.REVOCATION_FEED, fields)
    for event in events:
        pipe.xadd(keys.AUDIT_STREAM, {"e": event}, maxlen=int(audit_maxlen), approximate=True)
    if completing is not None:
        pipe.zadd(keys.COMPLETING, {completing[0]: completing[1]})
    if len(pipe):
        pipe.execute()


def drop(
    script: Script,
    refs: Iterable[Ref],
    *,
    epoch_cut: int | None = None,
    issuer_id: str = "",
    wait: ReplicaWait = NO_WAIT,
) -> dict[str, tuple[int, Ref]]:
    """Step 3: drop the grants, one script per task bucket; returns jti -> (status, ref as
    the grant recorded it). With `wait`, a WAIT follows each script on its connection: it
    covers the publish step too, which ran before."""
    by_bucket: dict[str, list[Ref]] = defaultdict(list)
    for ref in refs:
        by_bucket[jti_bucket(ref.jti)].append(ref)
    out: dict[str, tuple[int, Ref]] = {}
    for group in by_bucket.values():
        script_keys: list[str] = []
        for ref in group:
            script_keys += [keys.grant(ref.jti), keys.task_index(ref.task)]
        args = ["" if epoch_cut is None else str(epoch_cut), issuer_id, *(r.jti for r in group)]
        result = wait.run(
            script, keys=script_keys, args=args, what=f"drop of {len(group)} grant(s)"
        )
        for k, ref in enumerate(group):
            status, task, identity, exp = result[4 * k : 4 * k + 4]
            if int(status) == GONE:
                out[ref.jti] = (GONE, ref)
            else:
                out[ref.jti] = (int(status), Ref(ref.jti, str(task), str(identity), str(exp)))
    return out


def unindex(client: Any, refs: Iterable[Ref], *, task_index_too: bool = False) -> None:
    """Step 4: the grants' identity-index and expiry-index entries (and, for grants whose
    hash is already gone, their task-index entry)."""
    pipe = client.pipeline(transaction=False)
    for ref in refs:
        if task_index_too:
            pipe.zrem(keys.task_index(ref.task), ref.jti)
        pipe.zrem(keys.identity_index(ref.identity), ref.jti)
        pipe.zrem(keys.EXPIRY_INDEX, ref.member)
    if len(pipe):
        pipe.execute()


def sweep(client: Any, *, now: int, batch: int, audit_maxlen: str) -> int:
    """Remove expired grants from every index, with a grant.expired audit event each
    (their hashes have already gone by TTL). Events first, then the index entries, the
    expiry member last: a stop half-way repeats an event on the next sweep (at least
    once), never loses a member."""
    raw = client.zrangebyscore(keys.EXPIRY_INDEX, "-inf", now, start=0, num=batch)
    members = [str(m) for m in raw]
    if not members:
        return 0
    refs = [r for r in (parse_member(m) for m in members) if r is not None]
    publish(
        client,
        audit=[
            json.dumps(
                {
                    "ts": now,
                    "event": "grant.expired",
                    "outcome": "expired",
                    # Lua has no HMAC and this event bypasses AuditLog: its jti is
                    # HMAC'd here, as every audit event's is (domain/audit_hmac.py).
                    "jti_hmac": jti_hmac(r.jti),
                    "task": r.task,
                    "identity": r.identity,
                },
                separators=(",", ":"),
            )
            for r in refs
        ],
        audit_maxlen=audit_maxlen,
    )
    pipe = client.pipeline(transaction=False)
    for r in refs:
        pipe.zrem(keys.task_index(r.task), r.jti)
        pipe.zrem(keys.identity_index(r.identity), r.jti)
    for m in members:
        pipe.zrem(keys.EXPIRY_INDEX, m)
    pipe.execute()
    return len(members)


# A chain is at most max_delegation_depth deep; this bounds the work of one call anyway.
CASCADE_LIMIT = 10000


def children(client: Any, parents: Sequence[str]) -> list[tuple[str, str]]:
    """(child jti, parent jti) of every hop in the parents' children indexes."""
    pipe = client.pipeline(transaction=False)
    for parent in parents:
        pipe.zrange(keys.children_index(parent), 0, -1)
    return [
        (str(kid), parent)
        for parent, kids in zip(parents, pipe.execute(), strict=True)
        for kid in kids
    ]


def live_descendants(client: Any, jti: str, *, limit: int = CASCADE_LIMIT) -> list[str]:
    """The live hops below grant `jti`, breadth first (reads only): what a revocation's audit
    event lists before `cascade` revokes them."""
    out: list[str] = []
    level, seen = [jti], {jti}
    while level and len(seen) < limit:
        found = [kid for kid, _ in children(client, level) if kid not in seen]
        seen.update(found)
        live = read_refs(client, found) if found else {}
        out += [k for k in found if k in live]
        level = found
    return out


def cascade(
    client: Any,
    script: Script,
    roots: Sequence[str],
    *,
    limit: int = CASCADE_LIMIT,
    wait: ReplicaWait = NO_WAIT,
) -> list[str]:
    """Revoke every delegation hop below `roots` (grants already dropped): per level, read
    the children, publish a feed entry per live one (with its parent: no coarser entry
    covers another identity's hop), drop them, unindex them, then delete the parents'
    children indexes. Returns the jtis revoked."""
    revoked: list[str] = []
    level, seen = list(roots), set(roots)
    while level and len(seen) < limit:
        pairs = [(kid, parent) for kid, parent in children(client, level) if kid not in seen]
        kids = [kid for kid, _ in pairs]
        seen.update(kids)
        parent_of = dict(pairs)
        live = read_refs(client, kids)
        if live:
            publish(
                client,
                feed=[("jti", r.jti, r.exp, r.exp, parent_of[r.jti]) for r in live.values()],
            )
            outcome = drop(script, live.values(), wait=wait)
            dropped = [ref for status, ref in outcome.values() if status == DROPPED]
            unindex(client, dropped)
            revoked += [ref.jti for ref in dropped]
        pipe = client.pipeline(transaction=False)
        for parent in level:
            pipe.delete(keys.children_index(parent))
        pipe.execute()
        level = kids
    return revoked
