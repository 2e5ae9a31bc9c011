"""What lua/save_grant.lua and lua/save_hop.lua take alike: a hop is a grant written under
its parent, so both scripts' KEYS start with the same eleven keys and their ARGV with the
same ten values (each script's header names them); what follows differs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.commands.core import Script

from broker.domain.models import Grant
from broker.domain.ports import WriteRefused
from broker.store import keys
from broker.store.audit_stream import event_json
from broker.store.connection import ReplicaWait
from broker.store.grant_record import expiry_member


def write_keys(grant: Grant, replay: tuple[str, str, int] | None) -> list[str]:
    """KEYS[1..11]: the grant, its task and identity indexes, the expiry index, the epoch,
    the task's tombstone, the replay key (NO_KEY, never touched, without a replay claim),
    the audit stream, the identity states, the last exchanges and the task's owner."""
    return [
        keys.grant(grant.jti),
        keys.task_index(grant.task_id),
        keys.identity_index(grant.identity_id),
        keys.EXPIRY_INDEX,
        keys.EPOCH,
        keys.task_tombstone(grant.task_id),
        keys.replay(replay[0], replay[1]) if replay else keys.NO_KEY,
        keys.AUDIT_STREAM,
        keys.IDENTITY_STATE,
        keys.LAST_EXCHANGE,
        keys.task_owner(grant.task_id),
    ]


def write_args(
    grant: Grant,
    replay: tuple[str, str, int] | None,
    audit: Mapping[str, Any],
    now: int,
    quota: int,
    audit_maxlen: str,
) -> list[str | int]:
    """ARGV[1..10]: jti, exp, now, the epoch, the replay claim and its expiry, the expiry
    index member, the stream's maxlen, the audit event and the live-grant quota."""
    return [
        grant.jti,
        grant.exp,
        now,
        grant.epoch,
        "1" if replay else "0",
        replay[2] if replay else 0,
        expiry_member(grant),
        audit_maxlen,
        event_json(audit),
        quota,
    ]


def run_write(
    wait: ReplicaWait, script: Script, call: tuple[list[str], list[str | int]], what: str
) -> None:
    """Run the grant or hop write with the KEYS and ARGV of `call`; WriteRefused says why
    it refused."""
    script_keys, args = call
    result = wait.run(
        script,
        keys=script_keys,
        args=args,
        what=what,
        fail_closed=True,  # no token leaves unless its grant is on the replicas
    )
    if result != "ok":
        raise WriteRefused(str(result))
