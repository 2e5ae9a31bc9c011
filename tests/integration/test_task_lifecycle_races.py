"""Task moves racing grant writes on a real Redis: a suspension or an ending and a burst
of exchanges for the same task, with no token live on a task that is not running
(docs/agents.md, "Task lifecycle": the state change and the grant write are ordered)."""

from __future__ import annotations

import threading

import pytest

from broker.domain.introspection import introspect
from broker.domain.task_lifecycle import TaskCaller, transition
from broker.errors import BrokerError
from broker.store import keys
from tests.support.domain import exchange

pytestmark = pytest.mark.integration
OPERATOR = TaskCaller.operator("admin:race")


@pytest.mark.parametrize("action", ["suspend", "cancel"])
def test_exchanges_racing_a_move_leave_no_active_token(svc, raw, subject, action):
    task = f"it-race-{action}"
    exchange(svc, subject(), task_id=task)  # opens the task; the issuer's keys are cached
    tokens = [subject() for _ in range(8)]
    barrier = threading.Barrier(len(tokens) + 1)
    issued: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def go(token: str) -> None:
        barrier.wait()
        try:
            result = exchange(svc, token, task_id=task)
            with lock:
                issued.append(result.access_token)
        except BrokerError as err:
            with lock:
                refused.append(err.reason)

    def move() -> None:
        barrier.wait()
        transition(task, action, OPERATOR, svc)

    threads = [threading.Thread(target=go, args=(t,)) for t in tokens]
    threads.append(threading.Thread(target=move))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert len(issued) + len(refused) == len(tokens)
    reason = "task_suspended" if action == "suspend" else "task_completed"
    assert set(refused) <= {reason}
    # Whatever won each race, no token of the task is active now ...
    assert not any(introspect(t, svc)["active"] for t in issued)
    # ... and every grant written is indexed under the task, none was lost to the move.
    assert len(raw.zrange(keys.task_index(task), 0, -1)) == 1 + len(issued)
    if action == "suspend":
        transition(task, "resume", OPERATOR, svc)
        assert all(introspect(t, svc)["active"] for t in issued)


def test_every_key_of_a_task_has_a_ttl(svc, raw, subject):
    exchange(svc, subject(), task_id="it-ttl", task_labels=(("ci_job", "1"),))
    transition("it-ttl", "suspend", OPERATOR, svc)
    transition("it-ttl", "resume", OPERATOR, svc)
    transition("it-ttl", "fail", OPERATOR, svc)
    for key in (
        keys.task_state("it-ttl"),
        keys.task_owner("it-ttl"),
        keys.task_tombstone("it-ttl"),
    ):
        assert raw.ttl(key) > 0, key
    assert raw.ttl(keys.task_state("it-ttl")) <= svc.config.broker.task_tombstone_seconds
