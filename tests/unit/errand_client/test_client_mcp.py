"""errand_client.mcp: one token per task and MCP server, reused, renewed before expiry on the
injected clock, the task completed when the run ends; the DPoP hook."""

from __future__ import annotations

import pytest

from errand_client import ErrandClient
from errand_client.mcp import McpTokens, mcp_task

NOTES = "http://127.0.0.1:8001/mcp"
CALENDAR = "http://127.0.0.1:8002/mcp"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(broker, sleeps, clock) -> ErrandClient:  # type: ignore[no-untyped-def]
    return ErrandClient(
        broker.url, lambda: "hdr.subject.sig", clock=clock, sleep=sleeps, allow_http=True
    )


def test_one_token_per_server_reused_within_the_task(broker, client) -> None:  # type: ignore[no-untyped-def]
    scopes = {NOTES: "notes:discover notes:read", CALENDAR: ["cal:read"]}
    with mcp_task(client, "triage", purpose="triage", scopes=scopes) as tokens:
        first = tokens.headers(NOTES)
        assert tokens.headers(NOTES) == first  # reused
        other = tokens.headers(CALENDAR)
        assert other != first
        assert tokens.exchanges == 2 and len(broker.token_requests) == 2
    notes_form, calendar_form = broker.token_requests
    assert notes_form["resource"] == [NOTES] and "audience" not in notes_form
    assert notes_form["scope"] == ["notes:discover notes:read"]
    assert calendar_form["resource"] == [CALENDAR] and calendar_form["scope"] == ["cal:read"]
    # one task for the whole run, completed once at the end
    assert notes_form["task_id"] == calendar_form["task_id"] == [tokens.task_id]
    assert len(broker.complete_requests) == 1


def test_renewed_before_expiry_for_the_same_task(broker, client, clock) -> None:  # type: ignore[no-untyped-def]
    tokens = McpTokens(client, "task-1", purpose="triage")
    first = tokens.access_token(NOTES)
    clock.now += 200  # 300 s token, 60 s margin: not yet
    assert tokens.access_token(NOTES) == first
    clock.now += 41
    second = tokens.access_token(NOTES)
    assert second != first and tokens.exchanges == 1
    assert [f["task_id"] for f in broker.token_requests] == [["task-1"], ["task-1"]]
    assert all(f["resource"] == [NOTES] for f in broker.token_requests)


def test_the_task_ends_when_the_run_raises(broker, client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), mcp_task(client, "triage", purpose="triage") as tokens:
        tokens.headers(NOTES)
        raise RuntimeError("the agent crashed")
    assert len(broker.complete_requests) == 1


def test_no_token_no_completion(broker, client) -> None:  # type: ignore[no-untyped-def]
    with mcp_task(client, "idle", purpose="nothing"):
        pass
    assert broker.complete_requests == [] and broker.token_requests == []


@pytest.mark.parametrize("bad", ["notes.example/mcp", "https://notes.example/mcp#x", ""])
def test_a_resource_is_an_absolute_uri(client, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        McpTokens(client, "t", purpose=None).token(bad)


def test_dpop_hook_signs_each_request(client) -> None:  # type: ignore[no-untyped-def]
    calls = []

    class Proof:
        def headers(
            self, access_token: str, method: str, url: str, *, body: bytes | None = None
        ) -> dict[str, str]:
            calls.append((method, url, body))
            return {"Authorization": f"DPoP {access_token}", "DPoP": "proof"}

    tokens = McpTokens(client, "t", purpose=None, dpop=Proof())
    out = tokens.headers(NOTES, body=b"{}")
    assert out["Authorization"].startswith("DPoP ") and out["DPoP"] == "proof"
    assert calls == [("POST", NOTES, b"{}")]


def test_no_token_in_repr(client) -> None:  # type: ignore[no-untyped-def]
    tokens = McpTokens(client, "t", purpose=None)
    value = tokens.access_token(NOTES)
    assert value not in repr(tokens) and NOTES in repr(tokens)
