"""How a grant is laid out in Redis.

A grant is a hash (keys.grant) with one-letter field names, expiring at the token's exp. It
sits in the index of its task and of its identity (zsets jti -> exp, keys.task_index and
keys.identity_index), each expiring with the newest grant it holds, and in the expiry index
(keys.EXPIRY_INDEX) as the member "jti task identity", scored by exp: the sweep and the
revoke-all clean-up find a grant's index entries from that member alone."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from broker.domain.models import Grant

log = logging.getLogger(__name__)


def grant_fields(grant: Grant) -> list[str]:
    # Short field names: a live grant should cost well under 1 KiB of Redis memory.
    return [
        "i", grant.identity_id,
        "y", grant.identity_type,
        "o", grant.owner,
        "t", grant.task_id,
        "a", json.dumps(list(grant.audiences), separators=(",", ":")),
        "s", " ".join(grant.scopes),
        "c", grant.client_id,
        "e", str(grant.exp),
        "n", str(grant.iat),
        "u", grant.issuer_id,
        "p", str(grant.epoch),
        "r", grant.purpose,
        # optional fields, only when set: a DPoP key's thumbprint (RFC 9449), the approval
        # it was issued under, audience -> contract version (runtime policy)
    ] + (["k", grant.dpop_jkt] if grant.dpop_jkt else []) + (
        ["ap", grant.approval_id] if grant.approval_id else []) + (
        ["v", json.dumps(dict(grant.contracts), separators=(",", ":"))] if grant.contracts else []
    )  # fmt: skip


def grant_from(jti: str, h: Mapping[str, str]) -> Grant | None:
    try:
        return Grant(
            jti=jti,
            identity_id=h["i"],
            identity_type=h["y"],
            owner=h["o"],
            task_id=h["t"],
            audiences=tuple(json.loads(h["a"])),
            scopes=tuple(h["s"].split()) if h["s"] else (),
            client_id=h["c"],
            exp=int(h["e"]),
            iat=int(h["n"]),
            issuer_id=h["u"],
            epoch=int(h["p"]),
            purpose=h.get("r", ""),
            dpop_jkt=h.get("k") or None,
            approval_id=h.get("ap", ""),
            contracts=contracts_of_record(h),
        )
    except (KeyError, ValueError):
        log.error("malformed grant record", extra={"jti": jti})
        return None


def contracts_of_record(h: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The (audience, contract version) pairs a grant record names; () for older records."""
    raw = h.get("v") or ""
    if not raw:
        return ()
    parsed = json.loads(raw)
    return tuple((str(a), str(v)) for a, v in parsed.items())


def expiry_member(grant: Grant) -> str:
    return f"{grant.jti} {grant.task_id} {grant.identity_id}"
