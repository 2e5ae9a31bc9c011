"""Signing audit checkpoints and task proofs with the broker's evidence key (the active
signing key, as revocation records are: broker/tokens/evidence.py), and sealing the chain.

Used by the worker's periodic sweep (workers/audit.py) and by the admin API, which seals
before an export so that an export ends with a fresh checkpoint."""

from __future__ import annotations

import logging
from typing import Any

from broker.domain.audit_chain import CHECKPOINT_TYP
from broker.runtime import Runtime
from broker.store.audit_seal import RedisAuditSealer, SealResult, SignedCheckpoint, Signer
from broker.tokens.evidence import sign_record

log = logging.getLogger(__name__)


def signer(svc: Runtime, typ: str = CHECKPOINT_TYP) -> Signer:
    def sign(claims: dict[str, Any]) -> SignedCheckpoint:
        key = svc.keyring.active
        jws = sign_record(claims, svc.keyring, svc.config.broker.issuer, typ=typ)  # type: ignore[arg-type]
        return SignedCheckpoint(jws=jws, kid=key.kid, public_jwk=key.public_jwk())

    return sign


def sealer(svc: Runtime) -> RedisAuditSealer:
    return RedisAuditSealer(svc.redis, retention_seconds=svc.settings.audit_retention_seconds)


def seal_now(svc: Runtime) -> SealResult | None:
    result = sealer(svc).seal(signer(svc), now=svc.clock.now())
    if result is not None and (result.lost or result.trimmed):
        log.warning(
            "audit checkpoint",
            extra={"seq": result.seq, "lost": result.lost, "trimmed": result.trimmed},
        )
    return result


def seal_if_due(svc: Runtime) -> SealResult | None:
    """Seal when the last checkpoint is older than ERRAND_AUDIT_CHECKPOINT_SECONDS."""
    state = sealer(svc).chain_state()
    if svc.clock.now() - float(state.get("sealed_at", 0)) < svc.settings.audit_checkpoint_seconds:
        return None
    return seal_now(svc)
