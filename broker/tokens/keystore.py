"""Signing keys shared by every node through Redis, encrypted with an operator-supplied
key-encryption key (KEK), with scheduled rotation and emergency rotation.

Each key record carries times, so every node derives the same state without a coordinator:
- published while publish_at <= now < retire_at (and not removed);
- the signing key is the published key with the latest activate_at <= now.
Scheduled rotation adds a key that is published at once but signs only after
`publish_lead_seconds` (verifiers' JWKS caches see it first), and gives the old key a
retire_at after the last token it could sign has expired. Emergency rotation activates a
new key at once and removes the old one from the JWKS at once.

The record format, its sealing and its authentication are in broker/tokens/keyrecord.py. A
record that fails authentication is ignored (logged; never published, never used to sign).
A node also never takes back what it has seen: a key it saw removed stays removed and a
retire_at never moves later, even if an older authentic copy of the record is written back.

Records of the old format are re-sealed in the new one when a node loads them, once: only
while Redis holds no authenticated record at all, only records whose sealed key opens with
the KEK and matches their kid, `alg` and `public_jwk`, with times in order, and all of them
in one compare-and-set. After that a record in the old format is refused.

Where the records live is a KeyRecordStore: broker/store/signing_keys.py on Redis."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from broker.tokens.keyrecord import (
    KeyRecord,
    KeyRecordRejected,
    RecordKeys,
    is_legacy,
    make_record,
    migrate_legacy,
    open_record,
    open_signing_key,
    seal_record,
)
from broker.tokens.keyring import KeyError_, KeyRing, SigningKey

log = logging.getLogger(__name__)


class KeyRecordStore(Protocol):
    """Where encrypted key records live (Redis hash errand:keys)."""

    def load_all(self) -> dict[str, str]: ...

    def put(self, kid: str, record_json: str, *, only_if_empty: bool = False) -> bool: ...

    def replace(self, expected: Mapping[str, str], updated: Mapping[str, str]) -> bool:
        """Write `updated` only if the whole hash still equals `expected` (compare-and-set)."""
        ...

    def version(self) -> int: ...


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
            key = open_signing_key(record, self._keys)
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
        # With no active key there is nothing for verifiers to move away from: a key published
        # ahead would leave the broker unable to sign (and not ready) for the whole lead time.
        # This happens when the scheduler's first rotation reaches an empty store before any
        # broker node has bootstrapped its key.
        activate_at = now if emergency or current is None else now + self.publish_lead_seconds
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
        if not published or any(r.activate_at > now for r in published):
            return False  # nothing yet: the first broker node bootstraps the key
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
