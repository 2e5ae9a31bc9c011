"""Audit events have a byte budget: the largest request anyone can make (an unverified `iss`,
`kid` and `purpose` of characters that JSON escapes to 12 bytes each, the longest task id
and request id) writes one stream entry under 2 KiB, and unverified text is kept out of the
stream: an `iss` that names no configured issuer is recorded by its SHA-256 prefix, its
length and a short ASCII-safe form, never verbatim. A normal denial keeps every field."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from broker.store import keys
from tests.support.hostile import ObservedBroker
from tests.support.jws import es256_sign

BUDGET = 2048
WIDE = "\U0001f600"  # one character, 12 bytes once JSON-escaped (a surrogate pair)
LONG_TASK = "t" * 128  # the longest task_id the form accepts
LONG_RID = "r" * 64  # the longest X-Request-Id kept


def last_entry(w: ObservedBroker) -> tuple[str, dict[str, Any]]:
    """The raw JSON of the newest stream entry, as Redis holds it, and its decoded event."""
    _id, fields = w.redis.xrevrange(keys.AUDIT_STREAM, count=1)[0]
    return fields["e"], json.loads(fields["e"])


def post(w: ObservedBroker, grant: str, token: str, **extra: Any) -> Any:
    form = w.form(grant, token, task_id=LONG_TASK, purpose=WIDE * 256, **extra)
    return w.post_token(form, rid=LONG_RID)


@pytest.mark.parametrize("grant", ["token-exchange", "jwt-bearer"])
def test_audit_budget_unknown_issuer_of_wide_characters(world: ObservedBroker, grant: str) -> None:
    iss = "https://" + WIDE * 400
    resp = post(world, grant, world.token(iss=iss))
    assert resp.status_code == 400
    raw, event = last_entry(world)
    assert len(raw.encode()) <= BUDGET, len(raw.encode())
    assert event["reason"] == "unknown_issuer"
    assert "\\ud83d" not in raw, "unverified text reached the stream verbatim"
    # Unverified free text is dropped, the unverified iss is recorded by digest.
    assert "purpose" not in event
    debug = iss[:200]  # what the verifier quotes of the iss
    assert event["debug_sha256"] == hashlib.sha256(debug.encode()).hexdigest()[:16]
    assert event["debug_length"] == len(debug)
    assert event["debug"].startswith("https://?") and len(event["debug"]) <= 72
    # The fields an operator needs are intact.
    assert event["request_id"] == LONG_RID
    assert event["task"] == LONG_TASK
    assert event["client_address"] == "127.0.0.1"
    assert isinstance(event["token_hmac"], str) and len(event["token_hmac"]) == 64
    # The log line is the same bounded event.
    line = world.capture.audit_lines()[-1]
    assert len(line.encode()) <= BUDGET and json.loads(line) == event


def test_audit_budget_unknown_kid_of_wide_characters(world: ObservedBroker) -> None:
    # Raw UTF-8 header bytes: the widest kid that still fits the 1 KiB header limit.
    header = json.dumps(world.header(kid=WIDE * 240), ensure_ascii=False).encode()
    token = es256_sign(world.key, header, world.claims())
    resp = post(world, "token-exchange", token)
    assert resp.status_code == 400
    raw, event = last_entry(world)
    assert len(raw.encode()) <= BUDGET, len(raw.encode())
    assert event["reason"] == "unknown_key"
    assert "\\ud83d" not in raw


def test_audit_budget_verified_token_matching_no_identity(make_world) -> None:
    """Anyone can mint a valid CI token: a verified token that matches no identity is still
    an unauthenticated caller. Its huge claims are cut; its purpose is dropped."""
    w = make_world(max_subject_token_bytes=65536)
    claims = w.claims(
        repository_id=WIDE * 800, repository_owner_id=WIDE * 800, ref=WIDE * 800, sub=WIDE * 300
    )
    # Raw UTF-8 claims: the most characters the 16,384-character form value can carry.
    token = es256_sign(w.key, w.header(), json.dumps(claims, ensure_ascii=False).encode())
    resp = post(w, "token-exchange", token)
    assert resp.status_code == 400
    raw, event = last_entry(w)
    assert len(raw.encode()) <= BUDGET, len(raw.encode())
    assert event["reason"] == "no_matching_identity"
    assert "purpose" not in event
    assert event["issuer"] == "gha" and event["request_id"] == LONG_RID


def test_audit_budget_verified_identity_asking_for_everything(world: ObservedBroker) -> None:
    """A matched identity's own denial keeps its purpose, but huge requests are cut."""
    form = world.form(
        "token-exchange",
        world.token(),
        task_id=LONG_TASK,
        purpose=WIDE * 256,
        audience=[f"https://{WIDE * 100}.example/{n}" for n in range(30)],
    )
    resp = world.post_token(form, rid=LONG_RID)
    assert resp.status_code == 400
    raw, event = last_entry(world)
    assert len(raw.encode()) <= BUDGET, len(raw.encode())
    assert event["identity"] == "acme-deploy"
    assert event["reason"] == "audience_not_allowed"
    assert event["purpose"].startswith(WIDE)


def test_audit_budget_normal_denial_keeps_all_its_fields(world: ObservedBroker) -> None:
    resp = world.exchange(scope="deploy:admin", purpose="roll back release 42", task_id="t-42")
    assert resp.status_code == 400
    raw, event = last_entry(world)
    assert len(raw.encode()) <= BUDGET
    assert "truncated" not in event and "...[cut]" not in raw
    for name in ("ts", "request_id", "client_address", "token_hmac", "issuer", "subject"):
        assert event[name], name
    assert event["identity"] == "acme-deploy"
    assert event["reason"] == "scope_not_allowed"
    assert event["purpose"] == "roll back release 42"
    assert event["task"] == "t-42"
    assert event["details"]["requested"] == ["deploy:admin"]
    assert event["description"] and event["error"] == "invalid_scope"


def test_audit_budget_plain_unknown_issuer_is_recorded_by_digest(world: ObservedBroker) -> None:
    iss = "https://elsewhere.example"
    resp = world.exchange(token=world.token(iss=iss), purpose="hello")
    assert resp.status_code == 400
    _raw, event = last_entry(world)
    assert event["reason"] == "unknown_issuer"
    assert event["debug_sha256"] == hashlib.sha256(iss.encode()).hexdigest()[:16]
    assert event["debug_length"] == len(iss)
    assert event["debug"] == iss  # short printable ASCII: the safe form is the text itself
    assert "purpose" not in event


def test_audit_budget_holds_for_any_event_shape() -> None:
    """Whatever a future event carries (many long fields, deep lists), what is written fits
    the budget and keeps the fields that identify the decision."""
    from broker.domain.audit_shape import EVENT_BUDGET_BYTES, bounded_event

    event: dict[str, Any] = {
        "ts": 1.0,
        "event": "token.exchange",
        "outcome": "denied",
        "reason": "scope_not_allowed",
        "request_id": LONG_RID,
        "identity": "acme-deploy",
        "task": LONG_TASK,
        **{f"extra{n}": WIDE * 500 for n in range(40)},
        "details": {"requested": [[WIDE * 300] * 50] * 50},
    }
    written = bounded_event(event)
    assert len(json.dumps(written, separators=(",", ":")).encode()) <= EVENT_BUDGET_BYTES
    assert written["truncated"] is True
    for name in ("ts", "event", "outcome", "reason", "request_id", "identity", "task"):
        assert written[name] == event[name], name
