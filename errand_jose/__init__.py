"""errand_jose: the strict JOSE reading the broker and the resource-server library share.

The bottom layer: it imports nothing from `broker`, `workers`, `errand_rs` or
`errand_client`, and needs only PyJWT and cryptography (for signature checks). Both sides read
a token the same way, so a token one accepts as well-formed the other does too.

    from errand_jose import read_compact_jws, strict_json_object, verify_signature
    from errand_jose import ASYMMETRIC_ALGORITHMS, PRIVATE_JWK_MEMBERS
    from errand_jose import check_proof, jwk_thumbprint     # DPoP (RFC 9449), RFC 7638
"""

from errand_jose.algorithms import ASYMMETRIC_ALGORITHMS, CURVE_ALGORITHMS
from errand_jose.compact import (
    MAX_HEADER_BYTES,
    CompactJws,
    JoseError,
    b64url_decode,
    read_compact_jws,
    strict_json_object,
    verify_signature,
)
from errand_jose.dpop import (
    DPOP_ALGORITHMS,
    DpopError,
    DpopProof,
    access_token_hash,
    check_proof,
    normalise_htu,
)
from errand_jose.jwk import PRIVATE_JWK_MEMBERS
from errand_jose.thumbprint import b64url_encode, jwk_thumbprint, public_key_for

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "CURVE_ALGORITHMS",
    "DPOP_ALGORITHMS",
    "MAX_HEADER_BYTES",
    "PRIVATE_JWK_MEMBERS",
    "CompactJws",
    "DpopError",
    "DpopProof",
    "JoseError",
    "access_token_hash",
    "b64url_decode",
    "b64url_encode",
    "check_proof",
    "jwk_thumbprint",
    "normalise_htu",
    "public_key_for",
    "read_compact_jws",
    "strict_json_object",
    "verify_signature",
]
