"""Strict, bounded reading of a compact JWS before any signature work (RFC 7515, RFC 8725).

Cheapest checks first: size, then shape (three base64url segments: no JWE, no JSON
serialisation, no empty signature as `alg: none` would have), then canonical base64url in
every segment (one token, one spelling), then strict JSON (UTF-8 only, no
duplicate members, no NaN/Infinity, objects only). PyJWT's own decoder accepts duplicate
members; we refuse them, so the claims we check are the claims that were signed."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

_SEGMENT = r"[A-Za-z0-9_-]+"
_COMPACT = re.compile(rf"({_SEGMENT})\.({_SEGMENT})\.({_SEGMENT})")
MAX_HEADER_BYTES = 1024


class JoseError(Exception):
    """Not a well-formed compact JWS; the message is safe to show."""


@dataclass(frozen=True)
class CompactJws:
    header: dict[str, Any]
    payload: dict[str, Any]


def _b64decode(segment: str) -> bytes:
    """Strict base64url (RFC 7515 §2: no padding): exactly one spelling per byte string.

    The last character of a segment of length 2 or 3 modulo 4 carries bits that encode
    nothing; lenient decoders ignore them, so one token could be re-spelled into others
    (another string, hash and audit fingerprint for the same signed content). We refuse
    any spelling that is not the canonical one (RFC 4648 §3.5: those bits must be zero)."""
    if len(segment) % 4 == 1:
        raise JoseError("bad base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as err:
        raise JoseError("bad base64url") from err
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise JoseError("non-canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JoseError("duplicate JSON member")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise JoseError("non-standard JSON number")


def strict_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, refusing duplicate members and NaN/Infinity."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise JoseError("not UTF-8") from err
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except JoseError:
        raise
    except (ValueError, RecursionError) as err:
        raise JoseError("not JSON") from err
    if not isinstance(value, dict):
        raise JoseError("not a JSON object")
    return value


def read_compact_jws(token: str, *, max_bytes: int) -> CompactJws:
    """Header and payload of a compact JWS, unverified."""
    if not isinstance(token, str) or not token:
        raise JoseError("empty token")
    if len(token) > max_bytes:
        raise JoseError("token too large")
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise JoseError("not a compact JWS")
    header_b64, payload_b64, signature_b64 = match.groups()
    if len(header_b64) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise JoseError("header too large")
    header = strict_json_object(_b64decode(header_b64))
    payload = strict_json_object(_b64decode(payload_b64))
    # PyJWT verifies the signature later but decodes it leniently: the spelling is ours to check.
    _b64decode(signature_b64)
    return CompactJws(header=header, payload=payload)
