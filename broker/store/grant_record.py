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
    # Short field names: a live grant should cost well under 1 KiB of Redis memory. The
    # identity's id comes first (lua/save_grant.lua reads it as ARGV[12]).
    fields = [
        "i", grant.identity_id,
        "y", grant.identity_type,
        "o", grant.owner,
        "t", grant.task_id,
        "a", _audiences_text(grant.audiences),
        "s", " ".join(grant.scopes),
        "e", str(grant.exp),
        "n", str(grant.iat),
        "u", grant.issuer_id,
        "p", str(grant.epoch),
    ]  # fmt: skip
    # Left out when they say nothing new (most grants): the client is the identity itself,
    # no purpose was given. grant_from reads their absence back as exactly that.
    if grant.client_id != grant.identity_id:
        fields += ["c", grant.client_id]
    if grant.purpose:
        fields += ["r", grant.purpose]
    return fields + _optional_fields(grant)


def _audiences_text(audiences: tuple[str, ...]) -> str:
    """One audience as itself, unless it could be read as JSON; several as a JSON list."""
    if len(audiences) == 1 and not audiences[0].startswith("["):
        return audiences[0]
    return json.dumps(list(audiences), separators=(",", ":"))


def audiences_of(text: str) -> tuple[str, ...]:
    if not text.startswith("["):
        return (text,)
    parsed = json.loads(text)
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        raise ValueError("audiences")
    return tuple(parsed)


def _optional_fields(grant: Grant) -> list[str]:
    """Written only when set, so a plain grant costs what it did. k: the DPoP key's
    thumbprint (RFC 9449); ap: the approval it was issued under and v: audience -> contract
    version (runtime policy); then delegation's fields (_chain_fields)."""
    out: list[str] = []
    for name, value in (
        ("k", grant.dpop_jkt or ""),
        ("ap", grant.approval_id),
        ("v", json.dumps(dict(grant.contracts), separators=(",", ":")) if grant.contracts else ""),
    ):
        if value:
            out += [name, value]
    return out + _chain_fields(grant)


def _chain_fields(grant: Grant) -> list[str]:
    """Delegation (domain/delegation.py), written only when set: a plain grant costs what it
    did. b: the subject acted for, x: the actors (newest first), h: the parent grant,
    g: every ancestor (root first), m: the one identity that may act for the token."""
    out: list[str] = []
    for name, value in (
        ("b", grant.subject),
        ("x", " ".join(grant.actors)),
        ("h", grant.parent),
        ("g", " ".join(grant.ancestors)),
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
            audiences=audiences_of(h["a"]),
            scopes=tuple(h["s"].split()) if h["s"] else (),
            client_id=h.get("c", h["i"]),
            exp=int(h["e"]),
            iat=int(h["n"]),
            issuer_id=h["u"],
            epoch=int(h["p"]),
            purpose=h.get("r", ""),
            dpop_jkt=h.get("k") or None,
            approval_id=h.get("ap", ""),
            contracts=contracts_of_record(h),
            subject=h.get("b", ""),
            actors=tuple(h.get("x", "").split()),
            parent=h.get("h", ""),
            ancestors=tuple(h.get("g", "").split()),
            may_act=h.get("m", ""),
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
