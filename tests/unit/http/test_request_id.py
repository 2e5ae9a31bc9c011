"""X-Request-Id on every response: the caller's own id when well formed, else the broker's,
and the same id as the audit event of the request."""

from __future__ import annotations

import re

import pytest

from tests.support.builders import CLIENT_ID, CLIENT_SECRET
from tests.support.forms import deploy_form
from tests.support.redis import stream_events

GENERATED = re.compile(r"[0-9a-f]{16}")


def _responses(client, subject, headers):
    return {
        "success": client.post("/token", data=deploy_form(subject()), headers=headers),
        "oauth error": client.post("/token", data={"grant_type": "password"}, headers=headers),
        "404": client.get("/no-such-endpoint", headers=headers),
        "413": client.post(
            "/introspect",
            data={"token": "x" * (70 * 1024)},
            headers=headers,
            auth=(CLIENT_ID, CLIENT_SECRET),
        ),
    }


def _expected_statuses(responses) -> None:
    assert responses["success"].status_code == 200, responses["success"].get_json()
    assert responses["oauth error"].status_code == 400
    assert responses["oauth error"].get_json()["error"]
    assert responses["404"].status_code == 404
    assert responses["413"].status_code == 413


def test_a_well_formed_caller_id_is_returned_on_every_response(client, subject) -> None:
    responses = _responses(client, subject, {"X-Request-Id": "ci-run-42.step_3"})
    _expected_statuses(responses)
    for name, resp in responses.items():
        assert resp.headers.get("X-Request-Id") == "ci-run-42.step_3", name


@pytest.mark.parametrize(
    "supplied",
    [None, "", "x" * 65, "has space", "semi;colon", "new\\nline", "caf\u00e9"],
)
def test_otherwise_the_broker_generates_one(client, subject, supplied) -> None:
    headers = {} if supplied is None else {"X-Request-Id": supplied}
    responses = _responses(client, subject, headers)
    _expected_statuses(responses)
    seen = set()
    for name, resp in responses.items():
        rid = resp.headers.get("X-Request-Id", "")
        assert GENERATED.fullmatch(rid), (name, rid)
        seen.add(rid)
    assert len(seen) == len(responses)  # one per request


def test_the_returned_id_finds_the_audit_event(client, exchange, svc) -> None:
    resp = exchange()
    assert resp.status_code == 200
    rid = resp.headers["X-Request-Id"]
    assert [e for e in stream_events(svc) if e.get("request_id") == rid]
