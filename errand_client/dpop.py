"""The client side of DPoP (RFC 9449): a key the client holds, and a fresh proof per request.

    key = DpopKey.generate()                        # EC P-256, kept in memory only
    proof = key.proof("POST", "https://errand.example/token")
    # at a resource server, bound to the token (ath) and, for the MCP DPoP profile, the body:
    headers = key.headers(token, "POST", "https://mcp.example/mcp", body=payload)

A proof is single-use (a new `jti` each time) and short-lived (`iat` is now). When a server
answers `use_dpop_nonce` with a `DPoP-Nonce` header (`wants_nonce` reads it), remember it
with `key.remember_nonce(url, nonce)` and retry with a new proof: the next proof to that
origin carries it. ErrandClient(dpop=True) does this for the token request.

Only cryptography and PyJWT: nothing of the broker."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DPOP_TYP = "dpop+jwt"
USE_DPOP_NONCE = "use_dpop_nonce"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 `ath`: base64url(SHA-256(access token))."""
    return _b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest of a body with SHA-256: `sha-256=:<base64>:`."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def _htu(url: str) -> str:
    """RFC 9449 §4.2: the request URI without query and fragment."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


@dataclass(eq=False)
class DpopKey:
    """An EC P-256 key pair the client proves possession of (ES256 proofs).

    The private key never leaves this object: no repr, no export. Nonces a server handed out
    (RFC 9449 §8) are kept per origin and sent in the next proof to that origin."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)
    _nonces: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def generate(cls, *, clock: Callable[[], float] = time.time) -> DpopKey:
        return cls(ec.generate_private_key(ec.SECP256R1()), clock=clock)

    def __repr__(self) -> str:
        return f"DpopKey(jkt={self.jkt!r})"

    @property
    def public_jwk(self) -> dict[str, str]:
        jwk = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        return {k: jwk[k] for k in ("kty", "crv", "x", "y")}

    @property
    def jkt(self) -> str:
        """RFC 7638 SHA-256 thumbprint: what a bound token's `cnf.jkt` names."""
        jwk = self.public_jwk
        canonical = json.dumps(
            {k: jwk[k] for k in ("crv", "kty", "x", "y")}, sort_keys=True, separators=(",", ":")
        )
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def remember_nonce(self, url: str, nonce: str | None) -> None:
        if nonce:
            with self._lock:
                self._nonces[_origin(url)] = nonce

    def nonce_for(self, url: str) -> str | None:
        with self._lock:
            return self._nonces.get(_origin(url))

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        body: bytes | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A fresh proof for one request. `access_token` adds `ath` (at a resource server);
        `body` adds the MCP DPoP profile's `content_digest` (send the same value as the
        `Content-Digest` header); `nonce` defaults to the last one this origin gave."""
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": _htu(url),
            "iat": int(self.clock()),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        nonce = nonce if nonce is not None else self.nonce_for(url)
        if nonce is not None:
            claims["nonce"] = nonce
        if body is not None:
            claims["content_digest"] = content_digest(body)
        if extra_claims:
            claims.update(extra_claims)
        return jwt.encode(
            claims,
            self.private_key,
            algorithm="ES256",
            headers={"typ": DPOP_TYP, "jwk": self.public_jwk},
        )

    def headers(
        self, access_token: str, method: str, url: str, *, body: bytes | None = None
    ) -> dict[str, str]:
        """Headers for a request to a resource server with a DPoP-bound token (RFC 9449 §7.1):
        `Authorization: DPoP <token>`, `DPoP: <proof>`, and with a body `Content-Digest`."""
        out = {
            "Authorization": f"DPoP {access_token}",
            "DPoP": self.proof(method, url, access_token=access_token, body=body),
        }
        if body is not None:
            out["Content-Digest"] = content_digest(body)
        return out


def wants_nonce(status: int, headers: Mapping[str, str], body: Any) -> str | None:
    """The nonce a server asks for (RFC 9449 §8 at an authorization server: 400 with
    `use_dpop_nonce`; §9 at a resource server: 401 with `WWW-Authenticate: DPoP
    error="use_dpop_nonce"`), or None."""
    nonce = headers.get("DPoP-Nonce")
    if not nonce:
        return None
    if status == 400 and isinstance(body, dict) and body.get("error") == USE_DPOP_NONCE:
        return nonce
    if status == 401 and USE_DPOP_NONCE in headers.get("WWW-Authenticate", ""):
        return nonce
    return None
