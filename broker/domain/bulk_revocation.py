"""Ending many grants at once, for incident response: revoke-all (the epoch cut), revocation
by task, identity, owner, identity type or issuer, and the fan-out job that removes what a
revoke-all cut.

Each bulk revocation takes a reason, is audited with who asked, answers with how many
grants it ended, and leaves a signed revocation record an auditor can verify later."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from broker.domain.ports import Services, StoreUnavailable
from broker.errors import InvalidRequest
from broker.tokens.evidence import sign_record

log = logging.getLogger(__name__)
BATCH = 500
KINDS = ("task", "identity", "owner", "identity_type", "issuer")


@dataclass(frozen=True)
class RevocationResult:
    kind: str
    value: str
    revoked: int
    record: str  # the signed revocation record (compact JWS)
    record_id: str
    epoch: int | None = None


def _record(svc: Services, **fields: Any) -> tuple[str, str]:
    record_id = "rev_" + secrets.token_urlsafe(12)
    jws = sign_record(
        {"jti": record_id, "iat": int(svc.clock.now()), **fields},
        svc.keyring,  # type: ignore[arg-type]  # tokens/ names KeyRing; any SigningKeys do
        svc.config.broker.issuer,
    )
    svc.revocations.append_evidence(record_id, jws)
    return record_id, jws


def check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason or len(reason) > 500 or any(ord(c) < 32 for c in reason):
        raise InvalidRequest(
            "reason: give a reason (1-500 printable characters)", reason="bad_reason"
        )
    return reason


def revoke_all(svc: Services, *, reason: str, actor: str) -> RevocationResult:
    """The cut: one epoch bump ends every live grant for introspection at once, whatever
    their number; workers then remove the old grants in batches."""
    reason = check_reason(reason)
    now = int(svc.clock.now())
    event = {
        "ts": svc.clock.now(),
        "event": "revoke.all",
        "outcome": "revoked",
        "reason": reason,
        "actor": actor,
    }
    epoch, live = svc.revocations.revoke_all(now=now, audit=event)
    svc.audit.record({**event, "epoch": epoch, "live_grants": live}, stored=True)
    # The cut has happened: from here on nothing may turn the answer into an error.
    record_id, jws = "", ""
    try:
        record_id, jws = _record(
            svc,
            action="revoke-all",
            selector={"all": True},
            reason=reason,
            actor=actor,
            revoked=live,
            epoch=epoch,
            at=now,
        )
    except StoreUnavailable as err:
        log.error("revoke-all: the cut holds but its record could not be stored: %s", err)
    try:
        svc.jobs.schedule_fanout(epoch)
    except Exception as err:  # the sweeper re-enqueues pending fan-outs; the cut already holds
        log.warning("could not enqueue the revoke-all clean-up: %s", type(err).__name__)
    return RevocationResult("all", "*", live, jws, record_id, epoch)


def _indexes_for(svc: Services, kind: str, value: str) -> list[tuple[str, str]]:
    """The (index kind, value) pairs whose grants a bulk revocation ends."""
    if kind == "identity_type":
        return [("identity", i.id) for i in svc.config.identities if i.type == value]
    if kind == "owner":  # an owner's grants are its identities' grants
        return [("identity", i.id) for i in svc.config.identities if i.owner == value]
    return [(kind, value)]


def revoke_by(svc: Services, *, kind: str, value: str, reason: str, actor: str) -> RevocationResult:
    if kind not in KINDS:
        raise InvalidRequest(f"kind: must be one of {', '.join(KINDS)}", reason="bad_kind")
    reason = check_reason(reason)
    now = int(svc.clock.now())
    store = svc.revocations
    revoked = 0
    if kind == "issuer":
        # No issuer index (it would cost every grant memory): scan the live grants.
        offset = 0
        while True:
            page = store.live_grant_page(offset, BATCH)
            if not page:
                break
            ended = store.revoke_many(page, publish_each=True, issuer_id=value)
            revoked += ended
            offset += len(page) - ended
    else:
        # One feed entry per revoked grant: exact, and independent of node clocks (an iat
        # cut-off would miss tokens from a node whose clock runs ahead, or hit new ones).
        for index in (store.index_key(k, v) for k, v in _indexes_for(svc, kind, value)):
            while True:
                jtis = store.index_members(index, BATCH)
                if not jtis:
                    break
                # Every jti read leaves the index (revoked or already expired): the loop ends.
                revoked += store.revoke_many(jtis, publish_each=True, index=index)
    event = {
        "ts": svc.clock.now(),
        "event": "revoke.bulk",
        "outcome": "revoked",
        "kind": kind,
        "value": value,
        "reason": reason,
        "actor": actor,
        "revoked": revoked,
    }
    if kind == "task":
        event["task"] = value
    # The grants are already revoked (each revocation script is its own write): a 503 here
    # says the bulk event is missing, and a retry, revoking nothing more, writes it.
    svc.audit.record(event, required=True)
    record_id, jws = _record(
        svc,
        action="revoke",
        selector={kind: value},
        reason=reason,
        actor=actor,
        revoked=revoked,
        at=now,
    )
    return RevocationResult(kind, value, revoked, jws, record_id)


def fanout(svc: Services, epoch: int, *, batch: int = 1000) -> dict[str, int]:
    """Remove every grant stamped before `epoch`. Idempotent; passes repeat until one ends
    nothing, since concurrent sweeps shift ranks under the cursor."""
    store = svc.revocations
    totals = {"examined": 0, "revoked": 0, "batches": 0, "passes": 0}
    while True:
        totals["passes"] += 1
        offset, pass_revoked = 0, 0
        while True:
            examined, revoked, survivors = store.fanout_batch(epoch, offset, batch)
            if examined == 0:
                break
            totals["examined"] += examined
            totals["revoked"] += revoked
            totals["batches"] += 1
            pass_revoked += revoked
            offset += survivors
            store.record_fanout_progress(
                epoch, {**totals, "updated_at": int(svc.clock.now()), "done": 0}
            )
            svc.audit.record(
                {
                    "ts": svc.clock.now(),
                    "event": "revoke.all.batch",
                    "epoch": epoch,
                    "batch_revoked": revoked,
                    **totals,
                }
            )
        if pass_revoked == 0 or totals["passes"] >= 5:
            break
    store.record_fanout_progress(epoch, {**totals, "updated_at": int(svc.clock.now()), "done": 1})
    svc.audit.record(
        {
            "ts": svc.clock.now(),
            "event": "revoke.all.cleaned",
            "outcome": "done",
            "epoch": epoch,
            **totals,
        }
    )
    return totals
