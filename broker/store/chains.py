"""Delegation hops in Redis (RFC 8693 actor_token; domain/delegation.py).

A hop is a grant like any other (store/grant_record.py, with its chain fields), indexed under
the ROOT's task, so completing or revoking the task ends the whole chain, and under its
actor's identity. It also sits in its parent's children index (keys.children_index): revoking
a grant revokes every hop below it, in the same script (lua/prelude.lua revoke_descendants,
called by revoke_grant.lua and revoke_many.lua). The hop is written by lua/save_hop.lua, which
re-checks atomically that every link above it is still live."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from broker.domain.models import Grant
from broker.store import keys, lua_scripts
from broker.store.audit_stream import RedisAuditStream
from broker.store.connection import NO_WAIT, ReplicaWait, store_errors
from broker.store.grant_record import grant_fields
from broker.store.write_call import run_write, write_args, write_keys


def save_hop_call(
    grant: Grant,
    *,
    replay: tuple[str, str, int] | None,
    audit: Mapping[str, Any],
    now: int,
    quota: int,
    audit_maxlen: str,
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of lua/save_hop.lua for one hop, in the order its header names."""
    if not grant.parent or not grant.ancestors or grant.ancestors[-1] != grant.parent:
        raise ValueError("a hop names its parent as its last ancestor")
    script_keys = [
        *write_keys(grant, replay),
        keys.children_index(grant.parent),
        keys.task_state(grant.task_id),
        *(keys.grant(jti) for jti in reversed(grant.ancestors)),  # the parent first
    ]
    args: list[str | int] = [
        *write_args(grant, replay, audit, now, quota, audit_maxlen),
        grant.subject,
        grant.task_id,
        *grant_fields(grant),
    ]
    return script_keys, args


class RedisChains(RedisAuditStream):
    """The ChainStore port (domain/ports.py) on Redis."""

    def __init__(
        self, client: redis.Redis, *, audit_maxlen: int, wait: ReplicaWait = NO_WAIT
    ) -> None:
        super().__init__(client, audit_maxlen=audit_maxlen)
        self._wait = wait
        self._save = client.register_script(lua_scripts.SAVE_HOP)

    @store_errors()
    def save_hop(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int = 0,
    ) -> None:
        call = save_hop_call(
            grant, replay=replay, audit=audit, now=now, quota=quota, audit_maxlen=self._audit_maxlen
        )
        run_write(self._wait, self._save, call, f"delegation hop {grant.jti}")

    @store_errors()
    def links_live(self, jtis: tuple[str, ...]) -> bool:
        if not jtis:
            return True
        return int(self._r.exists(*(keys.grant(jti) for jti in jtis))) == len(jtis)
