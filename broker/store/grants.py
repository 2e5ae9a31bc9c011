"""Grants in Redis: the revoke-all epoch, the exchange's preflight read and grant write,
introspection's read, revocation, task completion and the expiry sweep.

Every write that makes a token usable happens in one Lua script (lua/save_grant.lua), so a
grant, its indexes, the replay entry and its audit record exist together or not at all
(docs/security-model.md: fail closed). Any Redis fault surfaces as StoreUnavailable, which the HTTP
layer turns into a 503 with Retry-After.

How a grant is laid out in Redis is in store/grant_record.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis

from broker.domain.models import Grant, GrantState
from broker.domain.ports import PreflightState, StoreUnavailable, WriteRefused
from broker.domain.tasks import COMPLETED, TaskSpec
from broker.store import grant_steps, keys, lua_scripts
from broker.store.audit_stream import RedisAuditStream, event_json
from broker.store.connection import NO_WAIT, ReplicaWait, store_errors
from broker.store.grant_record import grant_fields, grant_from
from broker.store.inventory_state import state_record
from broker.store.task_lifecycle import RedisTaskLifecycle
from broker.store.write_call import run_write, write_args, write_keys


def save_grant_call(
    grant: Grant,
    *,
    replay: tuple[str, str, int] | None,
    audit: Mapping[str, Any],
    now: int,
    quota: int,
    audit_maxlen: str,
    task: str = "",
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of lua/save_grant.lua for one grant, in the order its header names."""
    script_keys = [
        *write_keys(grant, replay),
        keys.task_state(grant.task_id),
        keys.TASKS_OPEN,
    ]
    args: list[str | int] = [
        *write_args(grant, replay, audit, now, quota, audit_maxlen),
        *grant_fields(grant),
        task,  # last: the script reads it as ARGV[#ARGV]
    ]
    return script_keys, args


class RedisGrants(RedisTaskLifecycle, RedisAuditStream):
    """The GrantStore port (domain/ports.py) on Redis."""

    def __init__(
        self, client: redis.Redis, *, audit_maxlen: int, wait: ReplicaWait = NO_WAIT
    ) -> None:
        super().__init__(client, audit_maxlen=audit_maxlen)
        self._wait = wait
        self._save = client.register_script(lua_scripts.SAVE_GRANT)
        self._revoke = client.register_script(lua_scripts.REVOKE_GRANT)
        self._init_tasks(client)
        self._drop = client.register_script(lua_scripts.DROP_GRANTS)
        self._ensure_epoch = client.register_script(lua_scripts.ENSURE_EPOCH)
        self._preflight = client.register_script(lua_scripts.PREFLIGHT)

    @store_errors()
    def ensure_epoch(self) -> int:
        """Create the epoch if Redis has none (first start, or after data loss)."""
        return int(self._ensure_epoch(keys=[keys.EPOCH]))

    @store_errors()
    def current_epoch(self) -> int:
        """The revoke-all epoch now: what an exchange stamps on its grant, read when the
        request arrives so that a revoke-all landing while it runs refuses its write."""
        epoch = self._r.get(keys.EPOCH)
        return int(epoch) if epoch is not None else self.ensure_epoch()

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
        """Everything the exchange reads before it decides, in one round trip: the epoch,
        replay, the task's tombstone and owner, the identity's suspension state, and (when a
        window is given and the token is not a replay) one count against the verified
        identity's rate limit."""
        reply = self._preflight(
            keys=[
                keys.EPOCH,
                keys.replay(issuer_id, jti) if jti else keys.NO_KEY,
                keys.task_tombstone(task_id),
                keys.IDENTITY_STATE,
                keys.rate_counter("identity", identity_id or "-"),
                keys.task_owner(task_id),
                keys.task_state(task_id),
            ],
            args=[identity_id or "", rate_window_seconds if identity_id else 0],
        )
        return self._preflight_state(jti, reply)

    def _preflight_state(self, jti: str | None, reply: Sequence[Any]) -> PreflightState:
        """The state from lua/preflight.lua's nine values (ClusterGrants reads the same nine
        with a pipeline): the epoch, replay, the tombstone, the identity's state record, its
        request count and window reset, the task's owner, state and deadline."""
        epoch, replayed, done, raw_state, requests, reset, owner, task, deadline = reply
        if epoch is None:
            epoch = self.ensure_epoch()  # Redis lost its data (or is new): restart the epoch
        return PreflightState(
            epoch=int(epoch),
            replayed=bool(replayed and jti),
            task_completed=bool(done),
            identity_state=state_record(raw_state) if raw_state else None,
            identity_requests=requests,
            identity_window_reset=max(int(reset), 1) if requests else 0,
            task_owner=str(owner) if owner else None,
            task_suspended=task == "suspended",
            task_deadline=int(deadline) if deadline else None,
        )

    @store_errors()
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
        call = save_grant_call(
            grant,
            replay=replay,
            audit=audit,
            now=now,
            quota=quota,
            audit_maxlen=self._audit_maxlen,
            task=task.wire() if task else "",
        )
        run_write(self._wait, self._save, call, f"grant {grant.jti}")

    # -- introspection --------------------------------------------------------------------
    @store_errors()
    def grant_state(self, jti: str, task_id: str) -> GrantState:
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(keys.grant(jti))
        pipe.get(keys.EPOCH)
        pipe.exists(keys.task_tombstone(task_id))
        pipe.hget(keys.task_state(task_id), "s")
        record, epoch, done, task = pipe.execute()
        grant = grant_from(jti, record) if record else None
        return GrantState(
            grant=grant,
            current_epoch=int(epoch or 0),
            task_completed=bool(done),
            task_suspended=task == "suspended",
        )

    # -- revocation and completion ---------------------------------------------------------
    @store_errors()
    def revoke_grant(self, jti: str, *, audit: Mapping[str, Any]) -> tuple[str, str] | None:
        """Revoke one grant and every delegation hop below it; returns its (task,
        identity), or None if it was not live. The grant's fields name its index keys, so
        they are read first (every key a script touches is passed in KEYS); a grant
        rewritten in between is read again. The hops go next (grant_steps.cascade), also
        when the grant was already gone: the repeat of a revocation that stopped half-way
        finishes it."""
        found = self._revoke_one(jti, audit)
        grant_steps.cascade(self._r, self._drop, [jti], wait=self._wait)
        return found

    def _revoke_one(self, jti: str, audit: Mapping[str, Any]) -> tuple[str, str] | None:
        below = grant_steps.live_descendants(self._r, jti)
        if below:
            audit = {**audit, "descendants": below}
        for _ in range(3):
            ref = grant_steps.read_refs(self._r, [jti]).get(jti)
            if ref is None:
                return None
            found = self._wait.run(
                self._revoke,
                keys=[
                    keys.grant(jti),
                    keys.EXPIRY_INDEX,
                    keys.AUDIT_STREAM,
                    keys.REVOCATION_FEED,
                    keys.task_index(ref.task),
                    keys.identity_index(ref.identity),
                ],
                args=[jti, self._audit_maxlen, event_json(audit), ref.task, ref.identity],
                what=f"revocation of grant {jti}",
            )
            if found != "moved":
                return (str(found[0]), str(found[1])) if found else None
        raise StoreUnavailable(f"grant {jti} kept changing while it was revoked")

    @store_errors()
    def complete_task(
        self,
        task_id: str,
        *,
        identity_id: str,
        tombstone_seconds: int,
        audit: Mapping[str, Any],
        now: int,
        skew_seconds: int = 60,
    ) -> bool:
        """Tombstone the task, if `identity_id` owns it (WriteRefused("task_foreign") if
        not); False when it was already complete. Its feed entry covers tokens with iat up to
        now + skew: no token of the task can be issued after the tombstone, and a node whose
        clock runs ahead may have stamped an earlier one with a later iat."""
        result = self.transition_task(
            task_id,
            target=COMPLETED,
            identity_id=identity_id,
            audit=audit,
            now=now,
            tombstone_seconds=tombstone_seconds,
            suspension_seconds=0,  # unused by a terminal move
            feed_expiry=0,
            skew_seconds=skew_seconds,
        )
        if result.outcome == "foreign":
            raise WriteRefused("task_foreign")
        return result.outcome == "changed"

    @store_errors()
    def task_grant_ids(self, task_id: str) -> list[str]:
        return _strings(self._r.zrange(keys.task_index(task_id), 0, -1))

    @store_errors()
    def finish_task_cleanup(self, task_id: str) -> None:
        self._r.zrem(keys.COMPLETING, task_id)

    @store_errors()
    def stale_completions(self, older_than: float) -> list[str]:
        return _strings(
            self._r.zrangebyscore(keys.COMPLETING, "-inf", older_than, start=0, num=1000)
        )

    @store_errors()
    def sweep_expired(self, *, now: int, batch: int) -> int:
        return grant_steps.sweep(self._r, now=now, batch=batch, audit_maxlen=self._audit_maxlen)

    # -- operator views ---------------------------------------------------------------------
    @store_errors()
    def list_grants(
        self,
        *,
        now: int,
        task_id: str | None,
        identity_ids: list[str] | None,
        limit: int,
    ) -> list[Grant]:
        """Live grants of a task, of some identities (an owner's, say), or of everyone."""
        if task_id:
            index = keys.task_index(task_id)
            jtis = _strings(self._r.zrangebyscore(index, now + 1, "+inf", start=0, num=limit))
        elif identity_ids is not None:
            jtis = []
            for identity_id in identity_ids:
                index = keys.identity_index(identity_id)
                jtis += _strings(
                    self._r.zrangebyscore(index, now + 1, "+inf", start=0, num=limit - len(jtis))
                )
                if len(jtis) >= limit:
                    break
        else:
            members = _strings(
                self._r.zrangebyscore(keys.EXPIRY_INDEX, now + 1, "+inf", start=0, num=limit)
            )
            jtis = [m.split(" ", 1)[0] for m in members]
        pipe = self._r.pipeline(transaction=False)
        for jti in jtis:
            pipe.hgetall(keys.grant(jti))
        records = pipe.execute()
        grants = [grant_from(j, r) for j, r in zip(jtis, records, strict=True) if r]
        return [g for g in grants if g is not None]


def _strings(members: Any) -> list[str]:
    """A reply of member names, as the str a decode_responses client returns."""
    return list(cast(list[str], members))
