"""rotate_if_due(): scheduled signing-key rotation (keys in Redis only).

The new key is published at once and signs only after the publish lead, so verifiers'
JWKS caches have it first; the old key stays published until its last token expires."""

from __future__ import annotations

import logging

from workers.context import services

log = logging.getLogger(__name__)


def rotate_if_due() -> dict[str, object] | None:
    svc = services()
    keyring = svc.rotating_keys
    if keyring is None or not keyring.due_for_rotation(svc.settings.key_rotation_days):
        return None  # keys from files rotate by replacing the files
    # One rotation fleet-wide: the lock outlives the publish lead.
    if not svc.redis.set("errand:lock:rotate", "1", nx=True, ex=keyring.publish_lead_seconds + 60):
        return None
    result: dict[str, object] = keyring.rotate(emergency=False)
    svc.audit.record(
        {"ts": svc.clock.now(), "event": "keys.rotated", "actor": "scheduler", **result}
    )
    log.info("signing key rotation scheduled", extra={"kid": result.get("kid")})
    return result
