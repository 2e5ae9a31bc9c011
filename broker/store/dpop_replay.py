"""Spent DPoP proofs in Redis (the DpopReplayCache port): one SET NX EXAT per proof, so a
proof used at one broker node is refused at every other (RFC 9449 §11.1)."""

from __future__ import annotations

import redis

from broker.store import keys
from broker.store.connection import store_errors


class RedisDpopReplay:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    @store_errors()
    def claim_dpop_jti(self, jkt: str, jti: str, expires_at: int) -> bool:
        return bool(self._r.set(keys.dpop_jti(jkt, jti), "1", nx=True, exat=expires_at))
