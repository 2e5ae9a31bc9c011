"""The grant store on Redis Cluster: the steps that are one script on a single Redis, run as
a sequence of single-slot steps (store/keys.py names the groups).

The grant write (lua/save_grant.lua on one Redis) becomes four steps, each one script or
command on one slot, in an order chosen so that a stop between two of them fails closed:

1. identity ({i.ID}, lua/cluster_save_identity.lua): the live-grant quota, and the grant's
   entry in the identity's index, *before* step 4 reads the identity's state: a suspension
   landing after that read finds the entry and revokes the grant (it revokes what the
   index lists, after it writes the state);
2. replay (the subject token's replay key, alone): SET NX EXAT, the claim;
3. task ({t.BBB}, lua/cluster_save_task.lua): owner and tombstone checked, the grant hash,
   the task index and the owner written, in one script: a completed task refuses here
   exactly as on a single Redis;
4. global ({g}, lua/cluster_save_global.lua): identity state and epoch checked, then the
   expiry-index member, the `issued` audit event and the last-exchange time written.
A refusal at steps 2 to 4 undoes the earlier steps (the grant dropped, the index entry
removed, the subject token's replay claim released so the caller may retry), and so does an
error, as far as Redis lets it. The token is signed before, but leaves only after step 4
answers ok: no token without its stored grant. Left behind by a broker that dies mid-way
(never a usable token): an index entry scored by its exp, a claimed replay key, or a grant
nobody holds a token for, which expires with its TTL.

Why it stays safe without one script: introspection checks the grant, the task's tombstone
and the epoch on every call (domain/introspection.py), so a grant written after a revoke-all
or a completion is inactive anyway; steps 3 and 4 only spare the caller a dead token.

A delegation hop (lua/save_hop.lua on one Redis) is the same four steps, ClusterChains: its
jti is minted in the root task's bucket, so the hop, every link above it and the parent's
children index are checked and written in the task step. A task's move
(lua/task_transition.lua) is two: the task's keys (its bucket), then the global records.

Preflight's reads become one pipeline (any slots: reads need no atomicity) plus the
identity's rate count. Revocation of one grant is store/grant_steps.py's sequence, then its
cascade to the hops below it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import redis
from redis.commands.core import Script

from broker.domain.grant_ids import jti_bucket, task_bucket
from broker.domain.models import Grant
from broker.domain.ports import PreflightState, StoreUnavailable, WriteRefused
from broker.domain.tasks import TaskSpec
from broker.store import grant_steps, keys, lua_scripts
from broker.store.audit_stream import event_json
from broker.store.chains import RedisChains
from broker.store.connection import NO_WAIT, ReplicaWait, store_errors
from broker.store.grant_record import expiry_member, grant_fields
from broker.store.grants import RedisGrants
from broker.store.task_lifecycle import Move

log = logging.getLogger(__name__)


class _SteppedWrite:
    """What a grant write and a hop write do alike on a cluster: the four steps, of which
    only the task step differs (the subclass's), and the undo of the steps taken when a
    later one refuses or fails."""

    _r: redis.Redis
    _drop: Script
    _save_identity: Script
    _save_global: Script
    _audit_maxlen: str
    _written = "grant"  # what the undo's warning names

    def _init_steps(self, client: redis.Redis) -> None:
        self._save_identity = client.register_script(lua_scripts.CLUSTER_SAVE_IDENTITY)
        self._save_global = client.register_script(lua_scripts.CLUSTER_SAVE_GLOBAL)
        self._drop = client.register_script(lua_scripts.DROP_GRANTS)

    def _write_in_steps(
        self,
        grant: Grant,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int,
        task_step: Callable[[], object],
    ) -> None:
        """Steps 1 to 4, `task_step` the third; on a refusal or an error, undo the steps
        taken."""
        undo: list[str] = []  # the steps taken

        def steps() -> str:
            identity = self._save_identity(
                keys=[keys.identity_index(grant.identity_id)],
                args=[grant.jti, grant.exp, now, quota],
            )
            if identity != "ok":
                return str(identity)
            undo.append("identity")
            if replay is not None:
                replay_key = keys.replay(replay[0], replay[1])
                if not self._r.set(replay_key, "1", nx=True, exat=replay[2]):
                    return "replayed"
                undo.append("replay")
            undo.append("task")  # a refusal writes nothing; an error may have written it
            in_task = task_step()
            if in_task != "ok":
                return str(in_task)
            return save_global(self._save_global, grant, audit, now, self._audit_maxlen)

        try:
            with store_errors():
                reason = steps()
        except StoreUnavailable:
            self._undo(grant, replay, undo)
            raise
        if reason != "ok":
            self._undo(grant, replay, undo)
            raise WriteRefused(reason)

    def _undo(self, grant: Grant, replay: tuple[str, str, int] | None, undo: list[str]) -> None:
        """Take back steps 1 to 3, newest first, as far as Redis answers. The grant goes
        first (drop_grants: only if it is this grant, then its task-index entry)."""
        try:
            with store_errors():
                if "task" in undo:
                    self._undo_task(grant)
                if "replay" in undo and replay is not None:
                    self._r.delete(keys.replay(replay[0], replay[1]))
                if "identity" in undo:
                    self._r.zrem(keys.identity_index(grant.identity_id), grant.jti)
        except StoreUnavailable as err:
            # What is left cannot be used: no token left, and the leftovers expire.
            what = self._written
            log.warning("could not undo a refused %s write of %s: %s", what, grant.jti, err)

    def _undo_task(self, grant: Grant) -> None:
        ref = grant_steps.Ref(grant.jti, grant.task_id, grant.identity_id)
        grant_steps.drop(self._drop, [ref])


class ClusterGrants(_SteppedWrite, RedisGrants):
    """RedisGrants whose multi-slot steps run as single-slot sequences."""

    def __init__(
        self, client: redis.Redis, *, audit_maxlen: int, wait: ReplicaWait = NO_WAIT
    ) -> None:
        super().__init__(client, audit_maxlen=audit_maxlen, wait=wait)
        self._init_steps(client)
        self._save_task = client.register_script(lua_scripts.CLUSTER_SAVE_TASK)
        self._transition_bucket = client.register_script(lua_scripts.CLUSTER_TASK_TRANSITION)
        self._transition_global = client.register_script(lua_scripts.CLUSTER_TASK_GLOBAL)
        self._hit = client.register_script(lua_scripts.HIT_MANY)

    # -- exchange -------------------------------------------------------------------------
    @store_errors()
    def preflight(
        self,
        *,
        issuer_id: str,
        jti: str | None,
        task_id: str,
        identity_id: str | None = None,
        rate_window_seconds: int = 0,
    ) -> PreflightState:
        pipe = self._r.pipeline(transaction=False)
        pipe.get(keys.EPOCH)
        pipe.exists(keys.replay(issuer_id, jti) if jti else keys.NO_KEY)
        pipe.exists(keys.task_tombstone(task_id))
        pipe.hget(keys.IDENTITY_STATE, identity_id or "")
        pipe.get(keys.task_owner(task_id))
        pipe.hmget(keys.task_state(task_id), "s", "d")
        epoch, replayed, done, raw_state, owner, (task, deadline) = pipe.execute()
        requests, reset = 0, 0
        # As lua/preflight.lua: a replay of a spent token is refused without counting.
        if identity_id and rate_window_seconds and not (replayed and jti):
            count, ttl = self._hit(
                keys=[keys.rate_counter("identity", identity_id)], args=[rate_window_seconds]
            )
            requests, reset = int(count), int(ttl)
        state = raw_state if identity_id else None
        return self._preflight_state(
            jti, (epoch, replayed, done, state, requests, reset, owner, task, deadline)
        )

    def save_grant(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int = 0,
        task: TaskSpec | None = None,
    ) -> None:
        if jti_bucket(grant.jti) != task_bucket(grant.task_id):
            # A jti from grant_ids.new_grant_id() names its task's bucket; any other would
            # put the grant in another slot than its task, where no step can check both.
            raise WriteRefused("jti_not_in_task_bucket")
        task_step = partial(self._task_step, grant, now, task)
        self._write_in_steps(grant, replay, audit, now, quota, task_step)

    def _task_step(self, grant: Grant, now: int, task: TaskSpec | None) -> object:
        """Step 3 (lua/cluster_save_task.lua)."""
        return self._save_task(
            keys=[*_task_keys(grant), keys.task_state(grant.task_id)],
            args=[grant.jti, grant.exp, now, task.wire() if task else "", *grant_fields(grant)],
        )

    # -- revocation and completion ---------------------------------------------------------
    @store_errors()
    def revoke_grant(self, jti: str, *, audit: Mapping[str, Any]) -> tuple[str, str] | None:
        """store/grant_steps.py's sequence: read, publish (feed and audit), drop, unindex.
        The feed entry goes out before the grant is dropped: a caller that gets a 503 and
        retries finishes the drop; a grant is never gone without its feed entry."""
        found = self._revoke_steps(jti, audit)
        grant_steps.cascade(self._r, self._drop, [jti])
        return found

    def _revoke_steps(self, jti: str, audit: Mapping[str, Any]) -> tuple[str, str] | None:
        ref = grant_steps.read_refs(self._r, [jti]).get(jti)
        if ref is None:
            return None
        below = grant_steps.live_descendants(self._r, jti)
        event = {**audit, "descendants": below} if below else dict(audit)
        event["task"], event["identity"] = ref.task, ref.identity
        grant_steps.publish(
            self._r,
            feed=[("jti", jti, ref.exp, ref.exp)],
            audit=[event_json(event)],
            audit_maxlen=self._audit_maxlen,
        )
        status, dropped = grant_steps.drop(self._drop, [ref])[jti]
        if status != grant_steps.DROPPED:
            return None  # revoked meanwhile by another caller, who reports it
        grant_steps.unindex(self._r, [dropped])
        return dropped.task, dropped.identity

    _transition_script = "cluster_task_transition.lua"

    def _move(self, move: Move) -> tuple[Any, Any]:
        """The checks and the task's keys (its bucket: lua/cluster_task_transition.lua),
        then the audit event, feed entry, clean-up entry and gauges (global:
        lua/cluster_task_global.lua). A move that finds the task already there publishes
        its feed entry again (no audit event): if a broker died between the two steps, the
        repeat of the call repairs it (at worst a repeated feed entry)."""
        task_id, target, now = move.task_id, move.target, move.now
        outcome, before = self._transition_bucket(
            keys=[
                keys.task_tombstone(task_id),
                keys.task_owner(task_id),
                keys.task_state(task_id),
                keys.task_index(task_id),
            ],
            args=[
                target,
                now,
                move.identity_id or "",
                move.tombstone_seconds,
                move.suspension_seconds,
            ],
        )
        if outcome in ("changed", "same"):
            self._transition_global(
                keys=[
                    keys.COMPLETING,
                    keys.AUDIT_STREAM,
                    keys.REVOCATION_FEED,
                    keys.TASKS_OPEN,
                    keys.TASKS_COMPLETED,
                ],
                args=[
                    target,
                    now,
                    self._audit_maxlen,
                    event_json(move.audit) if outcome == "changed" else "",
                    task_id,
                    move.tombstone_seconds,
                    now + move.skew_seconds,
                    move.feed_expiry,
                ],
            )
        return outcome, before


def _task_keys(grant: Grant) -> list[str]:
    """The first four KEYS of both task steps (lua/cluster_save_task.lua and
    lua/cluster_save_hop_task.lua): the grant, the task's index, tombstone and owner."""
    return [
        keys.grant(grant.jti),
        keys.task_index(grant.task_id),
        keys.task_tombstone(grant.task_id),
        keys.task_owner(grant.task_id),
    ]


def save_global(
    script: Script, grant: Grant, audit: Mapping[str, Any], now: int, audit_maxlen: str
) -> str:
    """Step 4 of a grant or hop write (lua/cluster_save_global.lua). A hop opens no task
    (its root's grant did) and its subject must be usable too."""
    hop = bool(grant.parent)
    return str(
        script(
            keys=[
                keys.EPOCH,
                keys.EXPIRY_INDEX,
                keys.AUDIT_STREAM,
                keys.IDENTITY_STATE,
                keys.LAST_EXCHANGE,
                keys.TASKS_OPEN,
            ],
            args=[
                grant.epoch,
                grant.identity_id,
                expiry_member(grant),
                grant.exp,
                audit_maxlen,
                event_json(audit),
                now,
                "" if hop else grant.task_id,
                grant.subject if hop else "",
            ],
        )
    )


class ClusterChains(_SteppedWrite, RedisChains):
    """The ChainStore port on Redis Cluster: lua/save_hop.lua's write as four single-slot
    steps, the order and undo of ClusterGrants.save_grant: the actor's quota and index entry
    ({i.ACTOR}), the actor token's replay claim, the hop with its chain's and task's checks
    (the root task's bucket, lua/cluster_save_hop_task.lua), then the epoch, both identities'
    states and the records (global, lua/cluster_save_global.lua)."""

    def __init__(
        self, client: redis.Redis, *, audit_maxlen: int, wait: ReplicaWait = NO_WAIT
    ) -> None:
        super().__init__(client, audit_maxlen=audit_maxlen, wait=wait)
        self._init_steps(client)
        self._save_hop_task = client.register_script(lua_scripts.CLUSTER_SAVE_HOP_TASK)

    _written = "hop"

    def save_hop(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int = 0,
    ) -> None:
        if not grant.parent or not grant.ancestors or grant.ancestors[-1] != grant.parent:
            raise ValueError("a hop names its parent as its last ancestor")
        bucket = task_bucket(grant.task_id)
        if any(jti_bucket(j) != bucket for j in (grant.jti, *grant.ancestors)):
            # Minted in the root task's bucket (domain/delegation.py); a chain elsewhere
            # could not be checked in one step.
            raise WriteRefused("jti_not_in_task_bucket")
        task_step = partial(self._task_step, grant, now)
        self._write_in_steps(grant, replay, audit, now, quota, task_step)

    def _task_step(self, grant: Grant, now: int) -> object:
        """Step 3: the hop with its chain's and task's checks (lua/cluster_save_hop_task.lua)."""
        return self._save_hop_task(
            keys=[
                *_task_keys(grant),
                keys.children_index(grant.parent),
                keys.task_state(grant.task_id),
                *(keys.grant(jti) for jti in reversed(grant.ancestors)),  # the parent first
            ],
            args=[
                grant.jti,
                grant.exp,
                now,
                grant.epoch,
                grant.subject,
                grant.task_id,
                *grant_fields(grant),
            ],
        )

    def _undo_task(self, grant: Grant) -> None:
        super()._undo_task(grant)
        self._r.zrem(keys.children_index(grant.parent), grant.jti)
