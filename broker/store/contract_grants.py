"""Read the audiences and contract versions of live grants (domain/contracts.py), one
pipelined round trip per page of grants."""

from __future__ import annotations

import redis

from broker.store import keys
from broker.store.connection import store_errors
from broker.store.grant_record import audiences_of, contracts_of_record


class RedisGrantContracts:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    @store_errors()
    def contracts(self, jtis: list[str]) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]:
        pipe = self._r.pipeline(transaction=False)
        for jti in jtis:
            pipe.hmget(keys.grant(jti), "a", "v")
        out: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}
        for jti, (audiences, versions) in zip(jtis, pipe.execute(), strict=True):
            if audiences is None:  # expired or revoked meanwhile
                continue
            try:
                out[jti] = (
                    audiences_of(audiences),  # one audience is stored as plain text
                    dict(contracts_of_record({"v": versions or ""})),
                )
            except ValueError:
                continue
        return out
