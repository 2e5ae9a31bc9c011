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
    return fields


def _audiences_text(audiences: tuple[str, ...]) -> str:
    """One audience as itself, unless it could be read as JSON; several as a JSON list."""
    if len(audiences) == 1 and not audiences[0].startswith("["):
        return audiences[0]
    return json.dumps(list(audiences), separators=(",", ":"))


def _audiences_of(text: str) -> tuple[str, ...]:
    if not text.startswith("["):
        return (text,)
    parsed = json.loads(text)
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        raise ValueError("audiences")
    return tuple(parsed)


def grant_from(jti: str, h: Mapping[str, str]) -> Grant | None:
    try:
        return Grant(
            jti=jti,
            identity_id=h["i"],
            identity_type=h["y"],
            owner=h["o"],
            task_id=h["t"],
            audiences=_audiences_of(h["a"]),
            scopes=tuple(h["s"].split()) if h["s"] else (),
            client_id=h.get("c", h["i"]),
            exp=int(h["e"]),
            iat=int(h["n"]),
            issuer_id=h["u"],
            epoch=int(h["p"]),
            purpose=h.get("r", ""),
        )
    except (KeyError, ValueError):
        log.error("malformed grant record", extra={"jti": jti})
        return None


def expiry_member(grant: Grant) -> str:
    return f"{grant.jti} {grant.task_id} {grant.identity_id}"
