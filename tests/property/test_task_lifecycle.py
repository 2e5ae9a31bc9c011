"""The task state machine over random sequences of moves and exchanges, on the real Lua
scripts (fakeredis): a terminal state is absorbing, a suspended task never yields an active
token nor a new grant, and the script agrees with domain/tasks.py next_outcome at every
step (docs/agents.md, "Task lifecycle")."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.introspection import introspect
from broker.domain.task_lifecycle import TaskCaller, transition
from broker.domain.tasks import ACTIONS, RUNNING, SUSPENDED, TERMINAL, next_outcome
from broker.errors import BrokerError, Conflict
from tests.support.builders import UNIT_ISSUER, gha_token
from tests.support.domain import exchange

STEPS = st.lists(st.sampled_from([*ACTIONS, "exchange"]), min_size=1, max_size=8)
_ids = itertools.count()
OPERATOR = TaskCaller.operator("admin:property")


@settings(max_examples=20)
@given(steps=STEPS)
def test_random_moves_follow_the_state_machine(prop_env: dict[str, Any], steps: list[str]) -> None:
    svc = prop_env["svc"]
    task = f"prop-{next(_ids)}"
    token = exchange(
        svc, gha_token(prop_env["key"], UNIT_ISSUER, now=svc.clock.now()), task_id=task
    )
    tokens = [token.access_token]
    state = RUNNING
    for step in steps:
        if step == "exchange":
            try:
                issued = exchange(
                    svc, gha_token(prop_env["key"], UNIT_ISSUER, now=svc.clock.now()), task_id=task
                )
            except BrokerError as err:
                assert state != RUNNING, err.reason
                assert err.reason == ("task_suspended" if state == SUSPENDED else "task_completed")
            else:
                assert state == RUNNING, "a grant for a task that is not running"
                tokens.append(issued.access_token)
        else:
            target = ACTIONS[step]
            expected = next_outcome(state, target)
            try:
                result = transition(task, step, OPERATOR, svc)
            except Conflict:
                assert expected == "illegal"
            else:
                assert result["changed"] is (expected == "changed")
                assert result["previous"] == state
                state = target
        live = [introspect(t, svc)["active"] for t in tokens]
        if state == RUNNING:
            assert all(live)
        else:
            assert not any(live), f"an active token of a {state} task"
        assert svc.store.task_record(task, now=int(svc.clock.now()), limit=10).state == state
        if state in TERMINAL:
            assert svc.store.task_terminal_state(task) == state
