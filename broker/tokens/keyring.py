"""Errand's signing keys: one active key signs; every loaded key is published in the JWKS.

Keys are PEM files in ERRAND_SIGNING_KEY_DIR, shared by every node (a mounted secret). The
file `active` names the kid that signs; the others stay published so tokens they signed keep
verifying until they expire. A kid is the key's RFC 7638 thumbprint, so it never depends on
a file name."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.errors import BrokerError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class KeyError_(BrokerError):
    """The signing-key directory is missing, empty or ambiguous."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False)

    @property
    def public_key(self) -> PublicKey:
        cached = self.__dict__.get("_public_key")
        if cached is None:
            cached = self.private_key.public_key()
            object.__setattr__(self, "_public_key", cached)  # frozen: cache once, by hand
        return cached

    def public_jwk(self) -> dict[str, Any]:
        key = self.public_key
        if isinstance(key, ec.EllipticCurvePublicKey):
            jwk = json.loads(ECAlgorithm.to_jwk(key))
        elif isinstance(key, rsa.RSAPublicKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(key))
        else:
            jwk = json.loads(OKPAlgorithm.to_jwk(key))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return dict(jwk)


def _alg_for(key: PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return "EdDSA"


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK."""
    required = {
        "EC": ("crv", "kty", "x", "y"),
        "RSA": ("e", "kty", "n"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {k: jwk[k] for k in required[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _load_key(path: Path) -> SigningKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(
        loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyError_(f"{path.name}: unsupported key type")
    probe = SigningKey(kid="", alg=_alg_for(loaded), private_key=loaded)
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg=probe.alg, private_key=loaded)


class KeyRing:
    """One active signing key plus the verification keys still published."""

    def __init__(self, keys: list[SigningKey], active_kid: str) -> None:
        self._by_kid = {k.kid: k for k in keys}
        if active_kid not in self._by_kid:
            raise KeyError_(f"active key {active_kid!r} is not loaded")
        self.active = self._by_kid[active_kid]
        self._jwks = {"keys": [k.public_jwk() for k in keys]}

    def get(self, kid: str) -> SigningKey | None:
        return self._by_kid.get(kid)

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    def all_public_keys(self) -> dict[str, Any]:
        """Keys for verifying old revocation records: with static files, the published set."""
        return self._jwks

    @classmethod
    def from_dir(cls, directory: Path) -> KeyRing:
        if not directory.is_dir():
            raise KeyError_(f"signing key directory {directory} does not exist")
        paths = sorted(directory.glob("*.pem"))
        if not paths:
            raise KeyError_(f"no *.pem signing keys in {directory} (run `errand keys generate`)")
        keys = [_load_key(p) for p in paths]
        active_file = directory / "active"
        if active_file.exists():
            active_kid = active_file.read_text().strip()
        elif len(keys) == 1:
            active_kid = keys[0].kid
        else:
            raise KeyError_(f"{directory} holds several keys but no `active` file naming the kid")
        return cls(keys, active_kid)


def generate_key(directory: Path, *, activate: bool = True) -> SigningKey:
    """Write a new ES256 key (mode 0600) and, by default, make it the active one."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    key = SigningKey(kid=thumbprint(probe.public_jwk()), alg="ES256", private_key=private)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / f"{key.kid}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    if activate:
        tmp = directory / ".active.tmp"
        tmp.write_text(key.kid + "\n")
        tmp.replace(directory / "active")
    return key
