"""The format of a signing-key record as Redis holds it: sealing and authentication.

Records are authenticated as a whole, not only their sealed private key: whoever can write
to Redis but lacks the KEK could otherwise flip `removed`, move `activate_at` or swap
`public_jwk`, and so re-publish an emergency-removed key or choose the signing key. Two keys
are derived from the KEK with HKDF (RFC 5869), one per purpose: an AES-GCM key seals the
private key (the kid as associated data) and an HMAC-SHA256 key authenticates the canonical
JSON of every other field. A record that fails authentication is refused (KeyRecordRejected,
whose message never holds the record's content).

Records of the old format (only the private key sealed, with the KEK itself) can be re-sealed
in the new one (`migrate_legacy`) if they are consistent; when that is allowed is the store's
decision (broker/tokens/keystore.py). The new format seals with a derived key, so the old
format cannot be used to strip a record's authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.tokens.keyring import KeyError_, SigningKey, thumbprint

RECORD_VERSION = 2
MAX_RECORD_BYTES = 64 * 1024
_FIELDS = (
    "kid",
    "alg",
    "created_at",
    "publish_at",
    "activate_at",
    "retire_at",
    "removed",
    "enc",
    "public_jwk",
)
_SEAL_INFO = b"errand key record v2: private key seal"
_MAC_INFO = b"errand key record v2: record authentication"


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


@dataclass(frozen=True)
class RecordKeys:
    """The two keys derived from the KEK: never the KEK itself for two purposes."""

    seal: bytes = field(repr=False)
    mac: bytes = field(repr=False)

    @classmethod
    def derive(cls, kek: bytes) -> RecordKeys:
        def hkdf(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(kek)

        return cls(seal=hkdf(_SEAL_INFO), mac=hkdf(_MAC_INFO))


class KeyRecordRejected(Exception):
    """A record that is not used: the message says why, never the record's content."""


@dataclass(frozen=True)
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

    def published(self, now: float) -> bool:
        return (
            not self.removed
            and self.publish_at <= now
            and (self.retire_at is None or now < self.retire_at)
        )

    def body(self) -> dict[str, Any]:
        """Every field, and the format version: what the MAC covers."""
        return {"v": RECORD_VERSION, **{name: getattr(self, name) for name in _FIELDS}}


# -- the record format ------------------------------------------------------------------------
def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _mac(keys: RecordKeys, body: Mapping[str, Any]) -> str:
    digest = hmac.new(keys.mac, _canonical(body), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def seal_record(record: KeyRecord, keys: RecordKeys) -> str:
    """The JSON stored in Redis: every field plus a MAC over all of them."""
    body = record.body()
    return _canonical({**body, "mac": _mac(keys, body)}).decode()


def _strict_object(text: str) -> dict[str, Any]:
    """A JSON object with no duplicate members and no NaN/Infinity, of bounded size."""
    if len(text) > MAX_RECORD_BYTES:
        raise KeyRecordRejected("the record is too large")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in items:
            if name in out:
                raise KeyRecordRejected("the record repeats a member")
            out[name] = value
        return out

    def constant(name: str) -> Any:
        raise KeyRecordRejected("the record holds a non-finite number")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except ValueError:
        raise KeyRecordRejected("the record is not JSON") from None
    if not isinstance(data, dict):
        raise KeyRecordRejected("the record is not a JSON object")
    return data


def _is_time(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _record_from(data: Mapping[str, Any], field_kid: str) -> KeyRecord:
    """The typed record, or KeyRecordRejected. `field_kid` is the hash field it was stored under."""
    kid, alg, enc, jwk = data.get("kid"), data.get("alg"), data.get("enc"), data.get("public_jwk")
    if not isinstance(kid, str) or kid != field_kid:
        raise KeyRecordRejected("the record's kid is not the one it is stored under")
    if alg != "ES256" or not isinstance(enc, str) or not isinstance(jwk, dict):
        raise KeyRecordRejected("the record's alg, enc or public_jwk is malformed")
    created_at, publish_at = data.get("created_at"), data.get("publish_at")
    activate_at, retire_at = data.get("activate_at"), data.get("retire_at")
    if not (_is_time(created_at) and _is_time(publish_at) and _is_time(activate_at)) or not (
        retire_at is None or _is_time(retire_at)
    ):
        raise KeyRecordRejected("the record's times are malformed")
    removed = data.get("removed")
    if not isinstance(removed, bool):
        raise KeyRecordRejected("the record's removed flag is malformed")
    return KeyRecord(
        kid=kid,
        alg=alg,
        created_at=float(created_at),
        publish_at=float(publish_at),
        activate_at=float(activate_at),
        retire_at=None if retire_at is None else float(retire_at),
        removed=removed,
        enc=enc,
        public_jwk=jwk,
    )


def open_record(field_kid: str, text: str, keys: RecordKeys) -> KeyRecord:
    """A record in the current format whose MAC verifies, or KeyRecordRejected."""
    data = _strict_object(text)
    mac = data.pop("mac", None)
    if "v" not in data and mac is None:
        raise KeyRecordRejected("it is in the old format, whose fields are not authenticated")
    if data.get("v") != RECORD_VERSION or set(data) != {"v", *_FIELDS}:
        raise KeyRecordRejected("the record is not in the current format")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(keys, data)):
        raise KeyRecordRejected(
            "its authentication failed (changed outside Errand, or another KEK)"
        )
    # The MAC covers the members as parsed; the typed record must say exactly the same.
    record = _record_from(data, field_kid)
    if record.body() != data:
        raise KeyRecordRejected("the record's members are not of the types it was sealed with")
    return record


def is_legacy(text: str) -> bool:
    """A record of the old format: only its private key sealed, with the KEK itself."""
    try:
        data = _strict_object(text)
    except KeyRecordRejected:
        return False
    return "v" not in data and "mac" not in data


def _seal(key: bytes, kid: str, pem: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, pem, kid.encode())).decode()


def _unseal(key: bytes, kid: str, enc: str) -> bytes:
    try:
        raw = base64.b64decode(enc, validate=True)
        return AESGCM(key).decrypt(raw[:12], raw[12:], kid.encode())
    except (ValueError, InvalidTag):
        raise KeyRecordRejected("its private key does not open with this KEK") from None


def _private_key(record: KeyRecord, pem: bytes) -> SigningKey:
    """The signing key in `pem`, checked against the record's kid, alg and public_jwk."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise KeyRecordRejected("its private key cannot be loaded") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise KeyRecordRejected("its private key is not a P-256 key")
    key = SigningKey(kid=record.kid, alg=record.alg, private_key=private)
    jwk = key.public_jwk()
    if thumbprint(jwk) != record.kid or jwk != record.public_jwk:
        raise KeyRecordRejected("its private key does not match its kid and public_jwk")
    return key


def open_signing_key(record: KeyRecord, keys: RecordKeys) -> SigningKey:
    """The record's private key, unsealed and checked against its kid, alg and public_jwk."""
    return _private_key(record, _unseal(keys.seal, record.kid, record.enc))


def migrate_legacy(field_kid: str, text: str, kek: bytes, keys: RecordKeys) -> str:
    """An old-format record re-sealed in the current format, if it is consistent: the KEK
    opens its private key under its kid, the key matches its kid, alg and public_jwk, and
    its times are in order. Else KeyRecordRejected."""
    data = _strict_object(text)
    if set(data) != set(_FIELDS):
        raise KeyRecordRejected("the old-format record has unexpected members")
    record = _record_from(data, field_kid)
    pem = _unseal(kek, record.kid, record.enc)
    _private_key(record, pem)
    if not record.created_at <= record.publish_at <= record.activate_at or (
        record.retire_at is not None and record.retire_at < record.publish_at
    ):
        raise KeyRecordRejected("the old-format record's times are out of order")
    return seal_record(replace(record, enc=_seal(keys.seal, record.kid, pem)), keys)


def make_record(keys: RecordKeys, *, now: float, activate_at: float) -> KeyRecord:
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
        enc=_seal(keys.seal, kid, pem),
        public_jwk=jwk,
    )
