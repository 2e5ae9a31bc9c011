"""Key records for the key-ring tests: the Redis hash errand:keys in memory, a broker node
reading it, and a record exactly as the old (unauthenticated) format wrote it."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.clock import FixedClock
from broker.tokens.keyring import SigningKey, thumbprint
from broker.tokens.keystore import RedisKeyRing

MAX_TTL = 900
LEAD = 120


class MemoryKeyRecords:
    """The Redis hash errand:keys, in memory; `raw` is what an attacker with write access edits."""

    def __init__(self) -> None:
        self.raw: dict[str, str] = {}
        self._version = 0
        self._bootstrapped = False

    def load_all(self) -> dict[str, str]:
        return dict(self.raw)

    def put(self, kid: str, record_json: str, *, only_if_empty: bool = False) -> bool:
        if only_if_empty:
            if self._bootstrapped:
                return False
            self._bootstrapped = True
        self.raw[kid] = record_json
        self._version += 1
        return True

    def replace(self, expected: dict[str, str], updated: dict[str, str]) -> bool:
        if self.raw != dict(expected):  # compare-and-set on the whole hash, as Redis WATCH does
            return False
        self.raw.update(updated)
        self._version += 1
        return True

    def version(self) -> int:
        return self._version

    def tamper(self, kid: str, **changes: Any) -> None:
        record = json.loads(self.raw[kid])
        record.update(changes)
        self.raw[kid] = json.dumps(record, separators=(",", ":"))


def node(store: MemoryKeyRecords, kek: bytes, clock: FixedClock) -> RedisKeyRing:
    """A broker node: a fresh process reading the shared records (no cached state)."""
    return RedisKeyRing(
        store,  # type: ignore[arg-type]
        kek,
        max_token_ttl_seconds=MAX_TTL,
        publish_lead_seconds=LEAD,
        refresh_seconds=0,
        clock=clock,
    )


def kids(ring: RedisKeyRing) -> set[str]:
    return {k["kid"] for k in ring.jwks()["keys"]}


def legacy_record(kek: bytes, now: float, **changes: Any) -> tuple[str, str]:
    """(kid, JSON) exactly as the old format wrote it."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = SigningKey(kid="", alg="ES256", private_key=private).public_jwk()
    kid = thumbprint(jwk)
    jwk["kid"] = kid
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(12)
    enc = base64.b64encode(nonce + AESGCM(kek).encrypt(nonce, pem, kid.encode())).decode()
    record = {
        "kid": kid,
        "alg": "ES256",
        "created_at": now,
        "publish_at": now,
        "activate_at": now,
        "retire_at": None,
        "removed": False,
        "enc": enc,
        "public_jwk": jwk,
    }
    record.update(changes)
    return kid, json.dumps(record, separators=(",", ":"))
