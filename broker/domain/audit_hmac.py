"""Tokens, assertions and jtis appear in audit events only as HMAC-SHA256 under the server's
audit key, so a leaked audit log (a SIEM, an export, a log file) cannot be used to confirm a
guessed or stolen token. An operator who holds a token finds its events through
`POST /admin/audit/hash` or `errand audit hash`, which apply the same function.

Every event passes through `redact` before it is written (the log line in broker/audit.py,
the stream entry in broker/store/audit_stream.py), whatever its type:

- a field named `jti` or ending in `_jti` becomes `<name>_hmac` = HMAC(K, "jti\\0" || value);
- a field ending in `token_sha256` or `assertion_sha256` (the SHA-256 hex of a credential)
  becomes `<name without _sha256>_hmac` = HMAC(K, "token\\0" || that hex).

Lookups that key Redis by a token's SHA-256 (the replay key, the grant record) are not audit
fields and are unchanged. The key is set once per process (`configure`, from
broker/services.py); docs/audit.md says where it comes from."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_state: dict[str, bytes] = {}


def configure(key: bytes) -> None:
    if len(key) < 32:
        raise ValueError("the audit key must be at least 32 bytes")
    _state["key"] = key


def _key() -> bytes:
    key = _state.get("key")
    if key is None:
        # Never configured (a script building parts by hand): a key of this process only.
        log.warning("no audit key configured; audit HMACs are this process's own")
        key = _state["key"] = secrets.token_bytes(32)
    return key


def _mac(kind: bytes, value: str) -> str:
    message = kind + b"\0" + value.encode("utf-8", "surrogateescape")
    return hmac.new(_key(), message, hashlib.sha256).hexdigest()


def jti_hmac(jti: str) -> str:
    return _mac(b"jti", jti)


def digest_hmac(sha256_hex: str) -> str:
    """The HMAC that stands for a credential, from the SHA-256 hex of it."""
    return _mac(b"token", sha256_hex)


def token_hmac(token: str) -> str:
    return digest_hmac(hashlib.sha256(token.encode("utf-8", "replace")).hexdigest())


def _is_jti(name: str) -> bool:
    return name == "jti" or name.endswith("_jti")


def _is_digest(name: str) -> bool:
    return name.endswith(("token_sha256", "assertion_sha256"))


def redact(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in event.items():
        if _is_jti(name) and isinstance(value, str):
            out[f"{name}_hmac"] = jti_hmac(value)
        elif _is_digest(name) and isinstance(value, str):
            out[name.removesuffix("_sha256") + "_hmac"] = digest_hmac(value)
        elif _is_jti(name) and isinstance(value, list):
            out[f"{name}_hmac"] = [jti_hmac(str(v)) for v in value]
        else:
            out[name] = value
    return out
