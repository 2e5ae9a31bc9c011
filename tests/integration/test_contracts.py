"""Contract binding on a real Redis with a real RQ worker: a reload that declares a new,
widening contract version of an audience revokes exactly the grants issued under older
versions of it, once, and audits the old and new versions."""

from __future__ import annotations

from typing import Any

import pytest
from rq.job import Job

from broker.domain.introspection import introspect
from broker.jobs import contract_job_id
from broker.reload import schedule_contract_revocations
from tests.support.builders import DEPLOY_AUD
from tests.support.domain import exchange, run_jobs
from tests.support.redis import audit_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STATUS_AUD = "https://status.acme.example"


def contract(version: str, widening: bool = True) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        raw["audiences"] = [
            {"id": DEPLOY_AUD, "contract_version": version, "contract_widening": widening}
        ]

    return mutate


def test_a_widening_contract_revokes_exactly_the_old_version_grants(
    worker_env, make_svc, raw, subject
) -> None:
    old_svc = make_svc(mutate=contract("1", widening=False))
    old = [exchange(old_svc, subject(), task_id=f"old-{i}") for i in range(2)]
    other = exchange(old_svc, subject(), audiences=(STATUS_AUD,), scopes=("deploy:read",))
    assert old[0].grant.contracts == ((DEPLOY_AUD, "1"),)
    assert other.grant.contracts == ()

    new_svc = make_svc(mutate=contract("2"))
    fresh = exchange(new_svc, subject(), task_id="new")
    assert fresh.grant.contracts == ((DEPLOY_AUD, "2"),)

    # What the reload does when it applies the new file (broker/reload.py)
    schedule_contract_revocations(new_svc, old_svc.config, new_svc.config)
    schedule_contract_revocations(new_svc, old_svc.config, new_svc.config)  # another node
    job = Job.fetch(contract_job_id(DEPLOY_AUD, "2"), connection=new_svc.rq_redis)
    assert job.args == (DEPLOY_AUD, "2")
    run_jobs(new_svc)

    assert job.return_value(refresh=True) == {"examined": 4, "revoked": 2}
    assert [introspect(t.access_token, new_svc)["active"] for t in old] == [False, False]
    assert introspect(fresh.access_token, new_svc)["active"] is True
    assert introspect(other.access_token, new_svc)["active"] is True
    events = audit_events(raw)
    widened = [e for e in events if e["event"] == "contract.widened"]
    assert widened[0]["old_version"] == "1" and widened[0]["new_version"] == "2"
    revoked = [e for e in events if e["event"] == "contract.revoked"]
    assert revoked[-1]["revoked"] == 2 and revoked[-1]["audience"] == DEPLOY_AUD

    # Idempotent: running it again revokes nothing more.
    from workers.contracts import revoke_outdated_contracts

    assert revoke_outdated_contracts(DEPLOY_AUD, "2")["revoked"] == 0
