"""Signing keys shared by every node through Redis, encrypted with an operator-supplied
key-encryption key (KEK), with scheduled rotation and emergency rotation.

Each key record carries times, so every node derives the same state without a coordinator:
- published while publish_at <= now < retire_at (and not removed);
- the signing key is the published key with the latest activate_at <= now.
Scheduled rotation adds a key that is published at once but signs only after
`publish_lead_seconds` (verifiers' JWKS caches see it first), and gives the old key a
retire_at after the last token it could sign has expired. Emergency rotation activates a
new key at once and removes the old one from the JWKS at once."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.tokens.keyring import KeyError_, KeyRing, SigningKey, thumbprint


class KeyRecordStore(Protocol):
    """Where encrypted key records live (Redis hash errand:keys)."""

    def load_all(self) -> dict[str, str]: ...

    def put(self, kid: str, record_json: str, *, only_if_empty: bool = False) -> bool: ...

    def version(self) -> int: ...


def load_kek(path: Path) -> bytes:
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError) as err:
        raise KeyError_(f"cannot read the key-encryption key from {path}") from err
    if len(raw) != 32:
        raise KeyError_("the key-encryption key must be 32 bytes, base64-encoded")
    return raw


def new_kek() -> str:
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


@dataclass
class KeyRecord:
    kid: str
    alg: str
    created_at: float
    publish_at: float
    activate_at: float
    retire_at: float | None
    removed: bool
    enc: str = field(repr=False)  # base64(nonce || AES-GCM ciphertext of the PKCS8 PEM)
    public_jwk: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> KeyRecord:
        return cls(**json.loads(text))

    def published(self, now: float) -> bool:
        return (
            not self.removed
            and self.publish_at <= now
            and (self.retire_at is None or now < self.retire_at)
        )


def _seal(kek: bytes, kid: str, pem: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(kek).encrypt(nonce, pem, kid.encode())).decode()


def _unseal(kek: bytes, kid: str, enc: str) -> bytes:
    raw = base64.b64decode(enc)
    return AESGCM(kek).decrypt(raw[:12], raw[12:], kid.encode())


def make_record(kek: bytes, *, now: float, activate_at: float) -> KeyRecord:
    private = ec.generate_private_key(ec.SECP256R1())
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    kid = thumbprint(probe.public_jwk())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = SigningKey(kid=kid, alg="ES256", private_key=private).public_jwk()
    return KeyRecord(
        kid=kid,
        alg="ES256",
        created_at=now,
        publish_at=now,
        activate_at=activate_at,
        retire_at=None,
        removed=False,
        enc=_seal(kek, kid, pem),
        public_jwk=jwk,
    )


class RedisKeyRing:
    """A KeyRing whose state comes from Redis, re-read at most every `refresh_seconds`.

    It offers KeyRing's interface (active, get, jwks), so the domain does not know keys rotate."""

    def __init__(
        self,
        store: KeyRecordStore,
        kek: bytes,
        *,
        max_token_ttl_seconds: int,
        publish_lead_seconds: int = 120,
        refresh_seconds: float = 2.0,
        clock: Any = time,
    ) -> None:
        self._store = store
        self._kek = kek
        self._max_ttl = max_token_ttl_seconds
        self.publish_lead_seconds = publish_lead_seconds
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: KeyRing | None = None
        self._records: dict[str, KeyRecord] = {}
        self._loaded_at = 0.0
        self._private: dict[str, SigningKey] = {}

    def _now(self) -> float:
        return float(self._clock.time() if hasattr(self._clock, "time") else self._clock.now())

    # -- KeyRing interface ------------------------------------------------------------------------
    @property
    def active(self) -> SigningKey:
        return self._current().active

    def get(self, kid: str) -> SigningKey | None:
        return self._current().get(kid)

    def jwks(self) -> dict[str, Any]:
        return self._current().jwks()

    def all_public_keys(self) -> dict[str, Any]:
        """Every key ever used (minus compromised ones), for verifying old revocation records."""
        self._current()
        return {
            "keys": [
                {
                    **r.public_jwk,
                    "status": "retired" if not r.published(self._now()) else "published",
                }
                for r in self._records.values()
                if not r.removed
            ]
        }

    # -- state ------------------------------------------------------------------------------------
    def _current(self) -> KeyRing:
        now = self._now()
        with self._lock:
            if self._ring is None or now - self._loaded_at >= self._refresh_seconds:
                try:
                    self._ring = self._build(now)
                except Exception:
                    if self._ring is None:
                        raise
                    # Redis briefly unreachable: keep signing with the state we had.
                self._loaded_at = now
            return self._ring

    def _build(self, now: float) -> KeyRing:
        self._records = {kid: KeyRecord.from_json(t) for kid, t in self._store.load_all().items()}
        for _ in range(20):
            if self._records:
                break
            self.bootstrap(now)  # only one node wins; the others wait for its record
            self._records = {
                kid: KeyRecord.from_json(t) for kid, t in self._store.load_all().items()
            }
            if not self._records:
                time.sleep(0.1)
        published = [r for r in self._records.values() if r.published(now)]
        signing = [r for r in published if r.activate_at <= now]
        if not signing:
            raise KeyError_("no signing key is active in Redis")
        active = max(signing, key=lambda r: r.activate_at)
        keys = [self._signing_key(r) for r in published]
        return KeyRing(keys, active.kid)

    def _signing_key(self, record: KeyRecord) -> SigningKey:
        key = self._private.get(record.kid)
        if key is None:
            pem = _unseal(self._kek, record.kid, record.enc)
            private = serialization.load_pem_private_key(pem, password=None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            key = SigningKey(kid=record.kid, alg=record.alg, private_key=private)
            self._private[record.kid] = key
        return key

    def bootstrap(self, now: float) -> None:
        record = make_record(self._kek, now=now, activate_at=now)
        self._store.put(record.kid, record.to_json(), only_if_empty=True)

    def invalidate(self) -> None:
        with self._lock:
            self._ring = None

    # -- rotation ---------------------------------------------------------------------------------
    def rotate(self, *, emergency: bool = False) -> dict[str, Any]:
        now = self._now()
        records = {kid: KeyRecord.from_json(t) for kid, t in self._store.load_all().items()}
        published = [r for r in records.values() if r.published(now)]
        current = max(
            (r for r in published if r.activate_at <= now),
            key=lambda r: r.activate_at,
            default=None,
        )
        pending = [r for r in published if r.activate_at > now]
        if pending and not emergency:
            nxt = pending[0]
            return {"kid": nxt.kid, "activate_at": nxt.activate_at, "already_scheduled": True}
        activate_at = now if emergency else now + self.publish_lead_seconds
        new = make_record(self._kek, now=now, activate_at=activate_at)
        self._store.put(new.kid, new.to_json())
        retired: list[str] = []
        for old in published:
            if old.kid == new.kid:
                continue
            if emergency:
                old.removed = True  # out of the JWKS at once: offline verifiers reject its tokens
            else:
                # Keep it published until every token it may still sign has expired.
                old.retire_at = activate_at + self._max_ttl + 120
            self._store.put(old.kid, old.to_json())
            retired.append(old.kid)
        self.invalidate()
        return {
            "kid": new.kid,
            "activate_at": activate_at,
            "emergency": emergency,
            "previous": current.kid if current else None,
            "retired_or_removed": retired,
        }

    def due_for_rotation(self, rotation_days: float) -> bool:
        if rotation_days <= 0:
            return False
        now = self._now()
        records = [KeyRecord.from_json(t) for t in self._store.load_all().values()]
        published = [r for r in records if r.published(now)]
        if any(r.activate_at > now for r in published):
            return False
        newest = max((r.activate_at for r in published), default=0.0)
        return now - newest >= rotation_days * 86400

    def status(self) -> list[dict[str, Any]]:
        now = self._now()
        out = []
        for r in sorted(
            (KeyRecord.from_json(t) for t in self._store.load_all().values()),
            key=lambda r: r.created_at,
        ):
            state = (
                "removed"
                if r.removed
                else (
                    "retired"
                    if not r.published(now)
                    else ("pending" if r.activate_at > now else "published")
                )
            )
            out.append(
                {
                    "kid": r.kid,
                    "alg": r.alg,
                    "state": state,
                    "created_at": r.created_at,
                    "activate_at": r.activate_at,
                    "retire_at": r.retire_at,
                }
            )
        active = self.active.kid
        for item in out:
            if item["kid"] == active:
                item["state"] = "active"
        return out


class RedisKeyRecords:
    """KeyRecordStore on a Redis hash; the version counter tells nodes something changed."""

    def __init__(self, client: Any) -> None:
        from broker.store import keys

        self._r = client
        self._hash = keys.SIGNING_KEYS
        self._version = keys.SIGNING_KEYS_VERSION

    def load_all(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._r.hgetall(self._hash).items()}

    def put(self, kid: str, record_json: str, *, only_if_empty: bool = False) -> bool:
        if only_if_empty:
            # Two nodes booting together must not both create a first key.
            ok = bool(self._r.set(self._hash + ":bootstrap", kid, nx=True))
            if not ok:
                return False
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._hash, kid, record_json)
        pipe.incr(self._version)
        pipe.execute()
        return True

    def version(self) -> int:
        return int(self._r.get(self._version) or 0)
