"""Where the audit HMAC key comes from (broker/domain/audit_hmac.py, docs/audit.md), in order:

1. ERRAND_AUDIT_KEY_FILE: base64 of 32 random bytes, a secret mounted like the KEK;
2. derived from the KEK (ERRAND_KEY_ENCRYPTION_KEY_FILE) with HKDF, info
   "errand audit v1: value hmac", so a KEK deployment needs nothing new;
3. otherwise a random key kept in Redis (keys.AUDIT_HMAC_KEY, created once with SET NX), so
   every process of one deployment agrees. It protects a leaked log or export, not a leaked
   Redis; production should use 1 or 2 (a warning says so)."""

from __future__ import annotations

import base64
import logging
import secrets

import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.domain import audit_hmac
from broker.settings import Settings
from broker.store import keys
from broker.tokens.keyrecord import load_kek

log = logging.getLogger(__name__)
HKDF_INFO = b"errand audit v1: value hmac"


def resolve_audit_key(settings: Settings, r: redis.Redis) -> bytes:
    if settings.audit_key_file is not None:
        return load_kek(settings.audit_key_file)  # same format: base64 of 32 bytes
    if settings.kek_file is not None:
        kek = load_kek(settings.kek_file)
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(kek)
    if not settings.is_development:
        log.warning(
            "no ERRAND_AUDIT_KEY_FILE or ERRAND_KEY_ENCRYPTION_KEY_FILE: the audit HMAC key "
            "is kept in Redis"
        )
    try:
        r.set(keys.AUDIT_HMAC_KEY, base64.b64encode(secrets.token_bytes(32)).decode(), nx=True)
        stored = r.get(keys.AUDIT_HMAC_KEY)
        if stored:
            return base64.b64decode(stored)
    except (redis.RedisError, ValueError):
        pass
    log.warning("audit HMAC key unavailable from Redis; using a key of this process only")
    return secrets.token_bytes(32)


def configure_audit_key(settings: Settings, r: redis.Redis) -> None:
    audit_hmac.configure(resolve_audit_key(settings, r))
