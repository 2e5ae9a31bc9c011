"""revoke_outdated_contracts(audience, version): a widening contract change revokes the
grants issued under older versions of that audience's contract (domain/contracts.py).
Idempotent, with a fixed job id per (audience, version) (broker/jobs.py)."""

from __future__ import annotations

from broker.domain.contracts import revoke_outdated
from broker.store.contract_grants import RedisGrantContracts
from workers.context import services


def revoke_outdated_contracts(audience: str, version: str) -> dict[str, int]:
    svc = services()
    return revoke_outdated(svc, RedisGrantContracts(svc.redis), audience, version)
