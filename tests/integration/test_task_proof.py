"""A task's proof on a real Redis, written by the clean-up job run by an RQ worker: three
grants and a delegation hop are revoked, and the proof lists all four and verifies against
the broker's keys; it is kept with the tombstone's retention and served to an admin."""

from __future__ import annotations

import pytest

from broker.domain.audit_hmac import jti_hmac
from broker.domain.models import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT
from broker.domain.task_completion import cleanup_task, complete_task
from broker.domain.task_lifecycle import TaskCaller, transition
from broker.domain.task_proof import verify_proof
from broker.store import keys
from broker.store.audit_proofs import RedisTaskProofs
from tests.support.delegation import actor_ref, add_actors
from tests.support.domain import exchange, run_jobs
from tests.support.redis import audit_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = "acme-deploy"


@pytest.fixture
def svc(make_svc):  # type: ignore[no-untyped-def]
    return make_svc(mutate=lambda raw: add_actors(raw, "gha", ROOT))


def test_completed_task_proof_lists_every_grant_and_hop(worker_env, svc, raw, subject):
    grants = [
        exchange(svc, subject(), task_id="proof-task", scopes=("deploy:read", "deploy:write"))
        for _ in range(3)
    ]
    hop = exchange(
        svc,
        grants[0].access_token,
        subject_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        actor_token=subject(**actor_ref("hop-a")),
        actor_token_type=TOKEN_TYPE_JWT,
        purpose="act for the root",
        scopes=("deploy:read",),
    )
    assert raw.zcard(keys.task_index("proof-task")) == 4
    complete_task(grants[1].access_token, svc, request_id="rq-proof")
    proofs = RedisTaskProofs(svc.redis)  # type: ignore[attr-defined]
    assert proofs.find("proof-task") is None  # not before the clean-up

    run_jobs(svc)

    stored = proofs.find("proof-task")
    assert stored is not None
    claims = verify_proof(stored.jws, svc.keyring.jwks(), svc.config.broker.issuer)
    every = [*grants, hop]
    assert claims["grants"] == sorted(jti_hmac(t.grant.jti) for t in every)
    assert claims["grant_count"] == 4 and claims["state"] == "completed"
    assert claims["dead_at"] >= claims["ended_at"] > 0
    assert claims["epoch"] == svc.store.current_epoch()
    assert claims["feed_cutoff"] == claims["ended_at"] + svc.config.broker.clock_skew_seconds
    # Kept as long as the tombstone, and signed by a key published for audit verification.
    tomb_ttl = raw.ttl(keys.task_tombstone("proof-task"))
    assert 0 < raw.ttl(keys.audit_proof("proof-task")) <= tomb_ttl
    assert svc.keyring.active.kid in raw.hkeys(keys.AUDIT_KEYS)
    assert not any(raw.exists(keys.grant(t.grant.jti)) for t in every)
    proved = [e for e in audit_events(raw) if e["event"] == "task.proved"]
    assert [(e["task"], e["grant_count"]) for e in proved] == [("proof-task", 4)]
    # A second clean-up (the sweeper re-enqueuing) keeps the first proof.
    cleanup_task("proof-task", svc, proofs)
    assert proofs.find("proof-task") == stored


def test_cancelled_task_proof_names_its_state(worker_env, svc, raw, subject):
    issued = exchange(svc, subject(), task_id="proof-cancel")
    transition("proof-cancel", "cancel", TaskCaller.operator("ops"), svc)
    run_jobs(svc)
    stored = RedisTaskProofs(svc.redis).find("proof-cancel")  # type: ignore[attr-defined]
    assert stored is not None
    claims = verify_proof(stored.jws, svc.keyring.jwks())
    assert claims["state"] == "cancelled"
    assert claims["grants"] == [jti_hmac(issued.grant.jti)]
