"""Task proofs in Redis: the TaskProofs port (broker/domain/task_proof.py).

A proof and its covered set are one key each per task, kept as long as the task's tombstone
(a hash field cannot carry its own TTL on Redis 7.0). The public key that signed a proof is
also added to the checkpoints' key set (keys.AUDIT_KEYS), so it stays published for
verification after the key is rotated out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

import redis

from broker.domain.task_proof import StoredProof, TaskEnd
from broker.store import keys
from broker.store.connection import store_errors
from broker.store.task_lifecycle import terminal_state


class RedisTaskProofs:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client  # decoded responses

    @store_errors()
    def task_end(self, task_id: str) -> TaskEnd | None:
        pipe = self._r.pipeline(transaction=False)
        pipe.get(keys.task_tombstone(task_id))
        pipe.ttl(keys.task_tombstone(task_id))
        tombstone, ttl = pipe.execute()
        state = terminal_state(cast(str | None, tombstone))
        if state is None:
            return None
        # 'failed 1800000000'; a tombstone of an older version holds only the time.
        at = str(tombstone).rsplit(" ", 1)[-1]
        return TaskEnd(
            state=state,
            ended_at=int(at) if at.isdigit() else 0,
            ttl_seconds=max(int(ttl), 1),
        )

    @store_errors()
    def cover(self, task_id: str, hmacs: Sequence[str], *, ttl_seconds: int) -> list[str]:
        key = keys.audit_proof_cover(task_id)
        pipe = self._r.pipeline(transaction=True)
        if hmacs:
            pipe.sadd(key, *hmacs)
            pipe.expire(key, ttl_seconds)
        pipe.smembers(key)
        members = cast(set[str], pipe.execute()[-1])
        return sorted(members)

    @store_errors()
    def live_grants(self, task_id: str) -> list[str]:
        jtis = cast(list[str], self._r.zrange(keys.task_index(task_id), 0, -1))
        if not jtis:
            return []
        pipe = self._r.pipeline(transaction=False)
        for jti in jtis:
            pipe.exists(keys.grant(jti))
        return [j for j, live in zip(jtis, pipe.execute(), strict=True) if live]

    @store_errors()
    def save(self, task_id: str, proof: StoredProof, *, kid: str, ttl_seconds: int) -> bool:
        record = json.dumps({"proof": proof.jws, "jwk": proof.public_jwk})
        pipe = self._r.pipeline(transaction=True)
        pipe.set(keys.audit_proof(task_id), record, ex=ttl_seconds, nx=True)
        pipe.hsetnx(keys.AUDIT_KEYS, kid, json.dumps(proof.public_jwk))
        stored = pipe.execute()[0]
        return bool(stored)

    @store_errors()
    def find(self, task_id: str) -> StoredProof | None:
        raw = cast(str | None, self._r.get(keys.audit_proof(task_id)))
        if raw is None:
            return None
        record = json.loads(raw)
        return StoredProof(jws=record["proof"], public_jwk=record["jwk"])
