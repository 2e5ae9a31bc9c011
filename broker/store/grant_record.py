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
        *_chain_fields(grant),
    ]  # fmt: skip


def _chain_fields(grant: Grant) -> list[str]:
    """Delegation (domain/delegation.py), written only when set: a plain grant costs what it
    did. b: the subject acted for, x: the actors (newest first), h: the parent grant,
    k: every ancestor (root first), m: the one identity that may act for the token."""
    out: list[str] = []
    for name, value in (
        ("b", grant.subject),
        ("x", " ".join(grant.actors)),
        ("h", grant.parent),
        ("k", " ".join(grant.ancestors)),
        ("m", grant.may_act),
    ):
        if value:
            out += [name, value]
    return out


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
            subject=h.get("b", ""),
            actors=tuple(h.get("x", "").split()),
            parent=h.get("h", ""),
            ancestors=tuple(h.get("k", "").split()),
            may_act=h.get("m", ""),
        )
    except (KeyError, ValueError):
        log.error("malformed grant record", extra={"jti": jti})
        return None


def expiry_member(grant: Grant) -> str:
    return f"{grant.jti} {grant.task_id} {grant.identity_id}"
