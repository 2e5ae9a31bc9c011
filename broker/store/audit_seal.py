"""The audit sealer: extends the hash chain over new stream entries and stores a signed
checkpoint (construction: broker/domain/audit_chain.py; docs/audit.md).

One sealer at a time: a lock key with a TTL (keys.AUDIT_SEAL_LOCK), and the chain state and
the checkpoint are written in one MULTI/EXEC that WATCHes the lock and the chain, so a sealer
that lost its lock (it ran past the TTL) writes nothing. Sealing is idempotent: it starts from
the chain state, so running it twice, or from two workers, extends one chain.

The sealer reads the entries up to the stream's `last-generated-id` and compares how many
it read with the stream's `entries-added` counter (Redis 7): an entry deleted or trimmed
before it was sealed is counted in the checkpoint's `lost`, so verification reports it.

Retention (`retention_seconds`): after sealing, the stream is trimmed (XTRIM MINID) only up
to the last entry of the newest checkpoint whose entries are all older than the retention;
that checkpoint is kept as the anchor verification starts from, older checkpoints go."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from broker.domain.audit_chain import GENESIS, id_key, jws_digest, link, next_id
from broker.store import keys
from broker.store.connection import store_errors

PAGE = 1000
# Sealed per run at most; the rest waits for the next run (bounds one run's time and memory).
MAX_ENTRIES_PER_RUN = 100_000


@dataclass(frozen=True)
class SignedCheckpoint:
    jws: str
    kid: str
    public_jwk: Mapping[str, Any]


# claims -> the signed checkpoint (the caller signs with the broker's evidence key)
Signer = Callable[[dict[str, Any]], SignedCheckpoint]


@dataclass(frozen=True)
class SealResult:
    seq: int
    count: int
    lost: int
    last_id: str
    trimmed: int = 0


def _unverified_claims(jws: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified (the reader checks signatures itself)."""
    payload = jws.split(".")[1]
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    claims: dict[str, Any] = json.loads(data)
    return claims


class RedisAuditSealer:
    def __init__(
        self,
        client: redis.Redis,
        *,
        lock_seconds: int = 60,
        retention_seconds: int = 0,
    ) -> None:
        self._r = client
        self._lock_seconds = lock_seconds
        self._retention = retention_seconds

    # -- reading ---------------------------------------------------------------------------
    @store_errors()
    def chain_state(self) -> dict[str, str]:
        return cast(dict[str, str], self._r.hgetall(keys.AUDIT_CHAIN))

    @store_errors()
    def checkpoints(self, *, from_id: str = "-") -> list[tuple[str, str]]:
        """(stream id = last entry id covered, JWS), oldest first."""
        rows = cast(
            list[tuple[str, dict[str, str]]],
            self._r.xrange(keys.AUDIT_CHECKPOINTS, min=from_id, max="+"),
        )
        return [(cid, f["c"]) for cid, f in rows]

    @store_errors()
    def anchor_before(self, entry_id: str) -> tuple[str, str] | None:
        """The newest checkpoint whose entries all precede `entry_id`."""
        rows = cast(
            list[tuple[str, dict[str, str]]],
            self._r.xrevrange(keys.AUDIT_CHECKPOINTS, max="(" + entry_id, min="-", count=1),
        )
        return (rows[0][0], rows[0][1]["c"]) if rows else None

    @store_errors()
    def signing_keys(self) -> dict[str, Any]:
        """Every public key that signed a checkpoint or proof, as a JWKS."""
        raw = cast(dict[str, str], self._r.hgetall(keys.AUDIT_KEYS))
        return {"keys": [json.loads(v) for _k, v in sorted(raw.items())]}

    def entries(self, after: str, upto: str = "+") -> Iterator[tuple[str, dict[str, str]]]:
        """Stream entries after `after` (exclusive; "-" for all) up to `upto`, oldest first."""
        low = "-" if after in ("-", "0-0") else "(" + after
        while True:
            page = cast(
                list[tuple[str, dict[str, str]]],
                self._r.xrange(keys.AUDIT_STREAM, min=low, max=upto, count=PAGE),
            )
            yield from page
            if len(page) < PAGE:
                return
            low = "(" + page[-1][0]

    # -- sealing ---------------------------------------------------------------------------
    @store_errors()
    def seal(self, sign: Signer, *, now: float) -> SealResult | None:
        """Seal what is new; None when another sealer holds the lock or nothing is new."""
        token = secrets.token_hex(16)
        if not self._r.set(keys.AUDIT_SEAL_LOCK, token, nx=True, ex=self._lock_seconds):
            return None
        try:
            result = self._seal_locked(sign, token, now)
            if result is not None and self._retention > 0:
                result = SealResult(**{**result.__dict__, "trimmed": self._trim(now)})
            return result
        finally:
            self._release(token)

    def _release(self, token: str) -> None:
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(keys.AUDIT_SEAL_LOCK)  # type: ignore[no-untyped-call]
                if pipe.get(keys.AUDIT_SEAL_LOCK) == token:
                    pipe.multi()
                    pipe.delete(keys.AUDIT_SEAL_LOCK)
                    pipe.execute()
            except redis.WatchError:
                pass  # it expired and another sealer took it: not ours to delete

    def _seal_locked(self, sign: Signer, token: str, now: float) -> SealResult | None:
        state = self.chain_state()
        last_id = state.get("last_id", "0-0")
        head = state.get("head", GENESIS)
        seq = int(state.get("seq", 0))
        added_before = int(state.get("added", 0))
        if not self._r.exists(keys.AUDIT_STREAM):
            return None
        info: dict[str, Any] = self._r.xinfo_stream(keys.AUDIT_STREAM)
        upto = str(info["last-generated-id"])
        added_now = int(info.get("entries-added", 0))
        if id_key(upto) <= id_key(last_id):
            return None
        first: str | None = None
        count = 0
        end = last_id
        for entry_id, fields in self.entries(last_id, upto):
            first = first or entry_id
            head = link(head, entry_id, fields)
            count += 1
            end = entry_id
            if count >= MAX_ENTRIES_PER_RUN:
                break
        complete = id_key(end) >= id_key(upto) or count < MAX_ENTRIES_PER_RUN
        # Entries added since the last seal and not read now were deleted or trimmed unsealed.
        # The first seal of a stream counts nothing as lost: what went before it was never
        # chained (its checkpoint says how many with `before_genesis`).
        missing = max(0, added_now - added_before - count) if complete else 0
        lost, before_genesis = (0, missing) if seq == 0 else (missing, 0)
        if first is None:
            if lost == 0:
                return None
            first = end = upto  # nothing left to chain, but the loss is worth a checkpoint
        claims: dict[str, Any] = {
            "jti": "ckpt_" + secrets.token_urlsafe(12),
            "iat": int(now),
            "seq": seq + 1,
            "stream": keys.AUDIT_STREAM,
            "first_id": first,
            "last_id": end,
            "count": count,
            "lost": lost,
            "prev_head": state.get("head", GENESIS),
            "head": head,
            "prev_checkpoint": state.get("checkpoint", GENESIS),
        }
        if before_genesis:
            claims["before_genesis"] = before_genesis
        signed = sign(claims)
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(keys.AUDIT_SEAL_LOCK, keys.AUDIT_CHAIN)  # type: ignore[no-untyped-call]
                if pipe.get(keys.AUDIT_SEAL_LOCK) != token:
                    return None  # the lock lapsed: another sealer may be at work
                if cast(dict[str, str], pipe.hgetall(keys.AUDIT_CHAIN)) != state:
                    return None
                pipe.multi()
                cp_id = end if id_key(end) > id_key(last_id) else next_id(last_id)
                pipe.xadd(keys.AUDIT_CHECKPOINTS, {"c": signed.jws}, id=cp_id)
                pipe.hset(
                    keys.AUDIT_CHAIN,
                    mapping={
                        "head": head,
                        "last_id": end,
                        "seq": seq + 1,
                        "added": added_now if complete else added_before + count,
                        "checkpoint": jws_digest(signed.jws),
                        "sealed_at": now,
                    },
                )
                pipe.hset(keys.AUDIT_KEYS, signed.kid, json.dumps(dict(signed.public_jwk)))
                pipe.execute()
            except redis.WatchError:
                return None
        return SealResult(seq=seq + 1, count=count, lost=lost, last_id=end)

    def _trim(self, now: float) -> int:
        """Trim entries older than the retention, but only up to a checkpoint boundary."""
        cutoff_ms = int((now - self._retention) * 1000)
        anchor = self.anchor_before(f"{max(cutoff_ms, 0)}-0")
        if anchor is None:
            return 0
        anchor_id = anchor[0]
        removed = int(self._r.xtrim(keys.AUDIT_STREAM, minid=next_id(anchor_id), approximate=False))
        self._r.xtrim(keys.AUDIT_CHECKPOINTS, minid=anchor_id, approximate=False)
        return removed


def checkpoint_claims(jws: str) -> dict[str, Any]:
    return _unverified_claims(jws)
