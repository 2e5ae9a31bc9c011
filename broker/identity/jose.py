"""Strict, bounded reading of a compact JWS before any signature work (RFC 7515, RFC 8725).

Checks run cheapest first: size, then shape (three base64url segments: no JWE, no JSON
serialisation), then strict JSON (UTF-8 only, no duplicate keys, no NaN/Infinity, objects
only). Libraries' own decoders accept duplicate keys and numeric strings; we do not."""

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
    """The token is not a well-formed compact JWS; the message is safe to show."""


@dataclass(frozen=True)
class CompactJws:
    header: dict[str, Any]
    payload: dict[str, Any]


def _b64decode(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise JoseError("bad base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as err:
        raise JoseError("bad base64url") from err


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
    """Parse header and payload of a compact JWS without verifying it."""
    if not isinstance(token, str) or not token:
        raise JoseError("empty token")
    if len(token) > max_bytes:
        raise JoseError("token too large")
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise JoseError("not a compact JWS (expected three base64url segments)")
    header_b64, payload_b64, _sig = match.groups()
    if len(header_b64) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise JoseError("header too large")
    header = strict_json_object(_b64decode(header_b64))
    payload = strict_json_object(_b64decode(payload_b64))
    return CompactJws(header=header, payload=payload)
