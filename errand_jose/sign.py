"""Signing a compact JWS (RFC 7515 §7.1) over a header encoded once per key.

`jwt.encode` rebuilds and re-encodes the same protected header for every token, checks and
converts the claims, and looks the algorithm up again; for an access token that was about as
much CPU as the ECDSA signature itself. Here the caller keeps the header segment, the payload
is encoded the way PyJWT encodes it (compact JSON, keys in insertion order), and the
signature comes from the same PyJWT algorithm objects (for ES*, a raw r||s of fixed length,
RFC 7518 §3.4), so the tokens are the ones `jwt.encode` would write."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from jwt.algorithms import get_default_algorithms

from errand_jose.algorithms import ASYMMETRIC_ALGORITHMS

_ALGORITHMS = get_default_algorithms()


def b64url(raw: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def header_segment(header: Mapping[str, Any]) -> str:
    """A protected header as PyJWT writes it: sorted keys, compact."""
    return b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def sign_compact(header_b64: str, claims: Mapping[str, Any], private_key: Any, alg: str) -> str:
    """`header_b64.payload_b64.signature_b64` with `private_key` under `alg` (asymmetric
    algorithms only: never `none`, never HMAC)."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    payload_b64 = b64url(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signing_input = f"{header_b64}.{payload_b64}"
    signature = _ALGORITHMS[alg].sign(signing_input.encode("ascii"), private_key)
    return f"{signing_input}.{b64url(signature)}"
