"""Signing keys shared by every node through Redis, encrypted with an operator-supplied
key-encryption key (KEK), with scheduled rotation and emergency rotation.

Each key record carries times, so every node derives the same state without a coordinator:
- published while publish_at <= now < retire_at (and not removed);
- the signing key is the published key with the latest activate_at <= now.
Scheduled rotation adds a key that is published at once but signs only after
`publish_lead_seconds` (verifiers' JWKS caches see it first), and gives the old key a
retire_at after the last token it could sign has expired. Emergency rotation activates a
new key at once and removes the old one from the JWKS at once.

Records are authenticated as a whole, not only their sealed private key: whoever can write
to Redis but lacks the KEK could otherwise flip `removed`, move `activate_at` or swap
`public_jwk`, and so re-publish an emergency-removed key or choose the signing key. Two keys
are derived from the KEK with HKDF (RFC 5869), one per purpose: an AES-GCM key seals the
private key (the kid as associated data) and an HMAC-SHA256 key authenticates the canonical
JSON of every other field. A record that fails authentication is ignored (logged; never
published, never used to sign). A node also never takes back what it has seen: a key it saw
removed stays removed and a retire_at never moves later, even if an older authentic copy of
the record is written back.

Records of the old format (only the private key sealed, with the KEK itself) are re-sealed
in the new one when a node loads them, once: only while Redis holds no authenticated record
at all, only records whose sealed key opens with the KEK and matches their kid, `alg` and
`public_jwk`, with times in order, and all of them in one compare-and-set. After that a record
in the old format is refused: the new format seals with a derived key, so the old format
cannot be used to strip a record's authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.exceptions import WatchError

from broker.tokens.keyring import KeyError_, KeyRing, SigningKey, thumbprint

log = logging.getLogger(__name__)

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


class KeyRecordStore(Protocol):
    """Where encrypted key records live (Redis hash errand:keys)."""

    def load_all(self) -> dict[str, str]: ...

    def put(self, kid: str, record_json: str, *, only_if_empty: bool = False) -> bool: ...

    def replace(self, expected: Mapping[str, str], updated: Mapping[str, str]) -> bool:
        """Write `updated` only if the whole hash still equals `expected` (compare-and-set)."""
        ...

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
        self._kek = kek  # only to migrate old-format records
        self._keys = RecordKeys.derive(kek)
        self._max_ttl = max_token_ttl_seconds
        self.publish_lead_seconds = publish_lead_seconds
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: KeyRing | None = None
        self._records: dict[str, KeyRecord] = {}
        self._refused: dict[str, str] = {}  # kid -> why
        self._loaded_at = 0.0
        self._private: dict[str, SigningKey] = {}
        # What this node has seen, kept whatever Redis says later (an older authentic copy of
        # a record written back must not re-publish a removed key or extend a retirement).
        self._memory_lock = threading.Lock()
        self._seen_removed: set[str] = set()
        self._seen_retire_at: dict[str, float] = {}
        self._seen_authenticated: set[str] = set()
        self._reported: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"RedisKeyRing(refresh_seconds={self._refresh_seconds})"

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
        now = self._now()
        return {
            "keys": [
                {**r.public_jwk, "status": "published" if r.published(now) else "retired"}
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

    def _refuse(self, kid: str, text: str, why: str) -> None:
        """Log a refused record once per content; the record itself never reaches the log."""
        self._refused[kid] = why
        fingerprint = (kid, hashlib.sha256(text.encode()).hexdigest()[:16])
        with self._memory_lock:
            if fingerprint in self._reported:
                return
            self._reported.add(fingerprint)
        log.warning(
            "signing key record %r refused: %s; it is never published nor used to sign",
            kid[:64],
            why,
        )

    def _remember(self, record: KeyRecord) -> KeyRecord:
        """Merge with what this node saw before: removal is for good, retirement never later."""
        with self._memory_lock:
            self._seen_authenticated.add(record.kid)
            if record.removed:
                self._seen_removed.add(record.kid)
            if record.retire_at is not None:
                seen = self._seen_retire_at.get(record.kid, record.retire_at)
                self._seen_retire_at[record.kid] = min(seen, record.retire_at)
            removed = record.kid in self._seen_removed
            retire_at = self._seen_retire_at.get(record.kid, record.retire_at)
        return replace(record, removed=removed, retire_at=retire_at)

    def _read_records(self) -> dict[str, KeyRecord]:
        """The authenticated records, after migrating old-format ones if that is allowed."""
        raw = self._store.load_all()
        if self._migrate(raw):
            raw = self._store.load_all()
        self._refused = {}
        records: dict[str, KeyRecord] = {}
        for kid, text in raw.items():
            try:
                records[kid] = self._remember(open_record(kid, text, self._keys))
            except KeyRecordRejected as err:
                self._refuse(kid, text, str(err))
        return records

    def _migrate(self, raw: dict[str, str]) -> bool:
        """Re-seal old-format records, all in one compare-and-set, only while no record is
        authenticated (after that an old-format record is a downgrade, refused). True when
        this node rewrote them."""
        legacy = {kid: text for kid, text in raw.items() if is_legacy(text)}
        if not legacy or len(legacy) != len(raw):
            return False
        with self._memory_lock:
            seen = set(self._seen_authenticated)
        updated: dict[str, str] = {}
        for kid, text in legacy.items():
            try:
                if kid in seen:
                    raise KeyRecordRejected("this node saw the key authenticated before")
                updated[kid] = migrate_legacy(kid, text, self._kek, self._keys)
            except KeyRecordRejected as err:
                self._refuse(kid, text, f"old-format record not migrated: {err}")
        if not updated or not self._store.replace(raw, updated):
            return False
        log.warning(
            "signing key records re-sealed in the authenticated format: %s",
            ", ".join(sorted(updated)),
        )
        return True

    def _build(self, now: float) -> KeyRing:
        self._records = self._read_records()
        for _ in range(20):
            if self._records or self._refused:
                break
            self.bootstrap(now)  # only one node wins; the others wait for its record
            self._records = self._read_records()
            if not self._records:
                time.sleep(0.1)
        usable: list[tuple[KeyRecord, SigningKey]] = []
        for record in (r for r in self._records.values() if r.published(now)):
            try:
                usable.append((record, self._signing_key(record)))
            except KeyRecordRejected as err:
                self._records.pop(record.kid)  # nor listed among the keys ever used
                self._refuse(record.kid, record.enc, str(err))
        signing = [r for r, _ in usable if r.activate_at <= now]
        if not signing:
            refused = (
                f"; {len(self._refused)} record(s) refused, see the log" if self._refused else ""
            )
            raise KeyError_(f"no signing key is active in Redis{refused}")
        active = max(signing, key=lambda r: r.activate_at)
        return KeyRing([key for _, key in usable], active.kid)

    def _signing_key(self, record: KeyRecord) -> SigningKey:
        key = self._private.get(record.kid)
        if key is None:
            key = _private_key(record, _unseal(self._keys.seal, record.kid, record.enc))
            self._private[record.kid] = key
        return key

    def bootstrap(self, now: float) -> None:
        record = make_record(self._keys, now=now, activate_at=now)
        self._store.put(record.kid, seal_record(record, self._keys), only_if_empty=True)

    def invalidate(self) -> None:
        with self._lock:
            self._ring = None

    # -- rotation ---------------------------------------------------------------------------------
    def rotate(self, *, emergency: bool = False) -> dict[str, Any]:
        now = self._now()
        records = self._read_records()
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
        new = make_record(self._keys, now=now, activate_at=activate_at)
        self._store.put(new.kid, seal_record(new, self._keys))
        retired: list[str] = []
        for old in published:
            if old.kid == new.kid:
                continue
            if emergency:
                # Out of the JWKS at once: offline verifiers reject its tokens.
                old = replace(old, removed=True)
            else:
                # Keep it published until every token it may still sign has expired; never
                # later than a retirement already set (it stopped signing back then).
                retire_at = activate_at + self._max_ttl + 120
                old = replace(old, retire_at=min(retire_at, old.retire_at or retire_at))
            self._store.put(old.kid, seal_record(old, self._keys))
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
        published = [r for r in self._read_records().values() if r.published(now)]
        if any(r.activate_at > now for r in published):
            return False
        newest = max((r.activate_at for r in published), default=0.0)
        return now - newest >= rotation_days * 86400

    def status(self) -> list[dict[str, Any]]:
        now = self._now()
        out = []
        for r in sorted(self._read_records().values(), key=lambda r: r.created_at):
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
        out += [
            {"kid": kid[:64], "alg": None, "state": "refused", "reason": why}
            for kid, why in sorted(self._refused.items())
        ]
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

    def replace(self, expected: Mapping[str, str], updated: Mapping[str, str]) -> bool:
        """WATCH the hash, compare it whole, then write in MULTI/EXEC: a node that raced us
        (or anyone who changed a record meanwhile) makes this a no-op that returns False."""
        with self._r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._hash)
                current = {str(k): str(v) for k, v in pipe.hgetall(self._hash).items()}
                if current != dict(expected):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(self._hash, mapping=dict(updated))
                pipe.incr(self._version)
                pipe.execute()
            except WatchError:
                return False
        return True

    def version(self) -> int:
        return int(self._r.get(self._version) or 0)
