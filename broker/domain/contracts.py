"""Contract binding: an audience declares the version of its contract (or the hash of its
tool definitions, for an MCP server); each grant records the version of each declared
audience it was issued under (Grant.contracts). When a reload declares a new version marked
`contract_widening`, what a scope can do at that audience has grown, so the grants issued
under older versions (or before the audience declared one) are revoked by a worker job
(workers/contracts.py) and callers ask again, under the policy for the new version."""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain.models import Config
from broker.domain.ports import GrantContracts, Services

BATCH = 500


@dataclass(frozen=True)
class ContractChange:
    audience: str
    old_version: str
    new_version: str


def widened_contracts(old: Config, new: Config) -> list[ContractChange]:
    """Audiences whose declared contract version changed to one marked widening."""
    out = []
    for audience, spec in new.audiences.items():
        before = old.audiences.get(audience)
        old_version = before.contract_version if before else ""
        if spec.contract_widening and spec.contract_version != old_version:
            out.append(ContractChange(audience, old_version, spec.contract_version))
    return out


def revoke_outdated(
    svc: Services, grants: GrantContracts, audience: str, version: str
) -> dict[str, int]:
    """Revoke every live grant naming `audience` that was issued under another version of
    its contract. Idempotent: a second run finds nothing left to revoke."""
    store = svc.revocations
    examined = revoked = offset = 0
    while True:
        page = store.live_grant_page(offset, BATCH)
        if not page:
            break
        examined += len(page)
        bound = grants.contracts(page)
        outdated = [
            jti
            for jti, (audiences, contracts) in bound.items()
            if audience in audiences and contracts.get(audience) != version
        ]
        ended = store.revoke_many(outdated, publish_each=True) if outdated else 0
        revoked += ended
        offset += len(page) - ended
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": "contract.revoked",
            "outcome": "revoked",
            "audience": audience,
            "new_version": version,
            "examined": examined,
            "revoked": revoked,
        }
    )
    return {"examined": examined, "revoked": revoked}
