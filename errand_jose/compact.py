"""Strict, bounded reading of a compact JWS before any signature work (RFC 7515, RFC 8725).

Checks run cheapest first: size, then shape (three base64url segments: no JWE, no JSON
serialisation, no empty signature as `alg: none` would have), then canonical base64url in
every segment (one token, one spelling), then strict JSON (UTF-8 only, no duplicate members,
no NaN/Infinity, objects only). Libraries' own decoders accept duplicate members and lenient
base64url; we refuse them, so the claims we check are the claims that were signed.

The limits are the caller's: `max_bytes` always, `max_header_bytes` where a caller needs
another header bound than the default."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from jwt.algorithms import get_default_algorithms

from errand_jose.algorithms import ASYMMETRIC_ALGORITHMS

_SEGMENT = r"[A-Za-z0-9_-]+"
_COMPACT = re.compile(rf"({_SEGMENT})\.({_SEGMENT})\.({_SEGMENT})")
MAX_HEADER_BYTES = 1024


class JoseError(Exception):
    """The token is not a well-formed compact JWS; the message is safe to show."""


@dataclass(frozen=True)
class CompactJws:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes = b""  # ASCII(header_b64 "." payload_b64), what the signature covers
    signature: bytes = b""


def b64url_decode(segment: str) -> bytes:
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


def read_compact_jws(
    token: str, *, max_bytes: int, max_header_bytes: int = MAX_HEADER_BYTES
) -> CompactJws:
    """Header and payload of a compact JWS, unverified; the signature bytes to check next."""
    if not isinstance(token, str) or not token:
        raise JoseError("empty token")
    if len(token) > max_bytes:
        raise JoseError("token too large")
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise JoseError("not a compact JWS (expected three base64url segments)")
    header_b64, payload_b64, signature_b64 = match.groups()
    if len(header_b64) > max_header_bytes * 4 // 3 + 4:
        raise JoseError("header too large")
    header = strict_json_object(b64url_decode(header_b64))
    payload = strict_json_object(b64url_decode(payload_b64))
    return CompactJws(
        header=header,
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        # Decoded strictly here even where a library checks the signature later: libraries
        # decode it leniently, so its spelling is ours to check.
        signature=b64url_decode(signature_b64),
    )


_ALGORITHMS = get_default_algorithms()


def verify_signature(jws: CompactJws, key: Any, alg: str) -> bool:
    """Check the signature over the exact bytes we parsed, with the key's own algorithm.

    The claims the caller goes on to use are the ones decoded from those same bytes, so there
    is no second parse (a library's decoder) that could read them differently."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        return False
    try:
        return bool(_ALGORITHMS[alg].verify(jws.signing_input, key, jws.signature))
    except (InvalidSignature, ValueError, TypeError, KeyError):
        return False
