"""A task's proof: a statement, signed with the broker's evidence key, that every token of an
ended task is dead (docs/audit.md, "Task proofs").

The clean-up job (domain/task_completion.py `cleanup_task`) writes it once it has revoked
every grant of the task:

1. before revoking, the HMACs of every grant jti indexed under the task (delegation hops
   included: a hop is indexed under its root's task) are added to the task's covered set,
   which outlives a failed attempt, so a retried job still lists the grants the first
   attempt revoked;
2. the grants are revoked (each revocation is its own audit event);
3. only when no grant of the task is left is the proof signed and stored, kept as long as
   the task's tombstone; an existing proof is kept (the job is idempotent).

The proof's claims name the task, the state it ended in, when it ended, the HMACs it covers,
when the clean-up found them all dead, the revoke-all epoch and the revocation feed's
cut-off for the task (tokens with an `iat` up to it are refused by every resource server
that follows the feed). Its header `typ` is its own, so a proof is never taken for a
checkpoint or a revocation record, and the reverse."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from broker.domain.audit_hmac import jti_hmac
from broker.domain.ports import SigningKeys
from broker.tokens.evidence import EvidenceInvalid, sign_record, verify_record

PROOF_TYP = "errand-task-proof+jwt"
PROOF_CLAIMS = (
    "task",
    "state",
    "ended_at",
    "dead_at",
    "grants",
    "grant_count",
    "epoch",
    "feed_cutoff",
)


@dataclass(frozen=True)
class TaskEnd:
    """What a task's tombstone says: the state it ended in, when, and how long it is kept."""

    state: str
    ended_at: int
    ttl_seconds: int


@dataclass(frozen=True)
class StoredProof:
    jws: str
    public_jwk: dict[str, Any]  # the key that signed it, so a rotated-out key still verifies


class TaskProofs(Protocol):
    """Where proofs and their covered sets live (broker/store/audit_proofs.py)."""

    def task_end(self, task_id: str) -> TaskEnd | None: ...

    def cover(self, task_id: str, hmacs: Sequence[str], *, ttl_seconds: int) -> list[str]:
        """Add to the task's covered set; return the whole set, sorted."""
        ...

    def live_grants(self, task_id: str) -> list[str]:
        """Jtis still indexed under the task whose grant record exists."""
        ...

    def save(self, task_id: str, proof: StoredProof, *, kid: str, ttl_seconds: int) -> bool: ...

    def find(self, task_id: str) -> StoredProof | None: ...


class ProofIncomplete(Exception):
    """Grants of the task are still live: no proof yet (the job is retried)."""


def proof_claims(
    task_id: str,
    end: TaskEnd,
    hmacs: Sequence[str],
    *,
    dead_at: int,
    epoch: int,
    skew_seconds: int,
) -> dict[str, Any]:
    return {
        "jti": secrets.token_urlsafe(16),
        "iat": dead_at,
        "task": task_id,
        "state": end.state,
        "ended_at": end.ended_at,
        "dead_at": dead_at,
        "grants": sorted(hmacs),
        "grant_count": len(hmacs),
        "epoch": epoch,
        # The same cut-off the terminal move put on the revocation feed (task_transition.lua).
        "feed_cutoff": end.ended_at + skew_seconds,
    }


def begin_proof(task_id: str, jtis: Sequence[str], proofs: TaskProofs) -> TaskEnd | None:
    """Step 1: note the grants about to be revoked. None: the task has not ended."""
    end = proofs.task_end(task_id)
    if end is not None:
        proofs.cover(task_id, [jti_hmac(j) for j in jtis], ttl_seconds=end.ttl_seconds)
    return end


def finish_proof(
    task_id: str,
    end: TaskEnd,
    proofs: TaskProofs,
    *,
    keyring: SigningKeys,
    issuer: str,
    now: int,
    epoch: int,
    skew_seconds: int,
) -> dict[str, Any] | None:
    """Step 3: sign and store the proof; its claims, or None when one was already stored."""
    left = proofs.live_grants(task_id)
    if left:
        raise ProofIncomplete(f"{len(left)} grant(s) of the task still live")
    hmacs = proofs.cover(task_id, [], ttl_seconds=end.ttl_seconds)
    claims = proof_claims(task_id, end, hmacs, dead_at=now, epoch=epoch, skew_seconds=skew_seconds)
    key = keyring.active
    jws = sign_record(claims, keyring, issuer, typ=PROOF_TYP)  # type: ignore[arg-type]
    stored = proofs.save(
        task_id,
        StoredProof(jws=jws, public_jwk=key.public_jwk()),
        kid=key.kid,
        ttl_seconds=end.ttl_seconds,
    )
    return {"iss": issuer, **claims} if stored else None


def verify_proof(jws: str, jwks: dict[str, Any], issuer: str | None = None) -> dict[str, Any]:
    """Check a proof's signature against a JWKS and that it holds every claim; its claims.
    Raises EvidenceInvalid. Without `issuer`, the proof's own `iss` is used (the caller
    compares it with the broker it trusts)."""
    if issuer is None:
        try:
            issuer = str(jwt.decode(jws, options={"verify_signature": False}).get("iss", ""))
        except jwt.PyJWTError as err:
            raise EvidenceInvalid("not a JWS") from err
    claims = verify_record(jws, jwks, issuer, typ=PROOF_TYP)
    missing = [name for name in PROOF_CLAIMS if name not in claims]
    if missing:
        raise EvidenceInvalid(f"a task proof without {', '.join(missing)}")
    grants = claims["grants"]
    if not isinstance(grants, list) or len(grants) != claims["grant_count"]:
        raise EvidenceInvalid("grant_count does not match the grants listed")
    return claims
