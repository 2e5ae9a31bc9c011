"""The asymmetric JWS algorithms Errand accepts (RFC 8725 §3.1): never `none`, never HMAC."""

from __future__ import annotations

ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)

# The algorithm an EC or OKP key implies; RSA keys name theirs with `alg` or take the issuer's.
CURVE_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}
