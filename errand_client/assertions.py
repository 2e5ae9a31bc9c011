"""Assertions signed by an agent's own registered key (RFC 7523 §3 shape).

An agent registered with Errand holds an ES256 private key; Errand holds the public half
under a `kid`. For each exchange the agent signs a short JWT:

    header  {"alg": "ES256", "typ": "JWT", "kid": <registered kid>}
    claims  {"iss": <identity id>, "sub": <identity id>, "aud": <broker token endpoint>,
             "iat": now, "exp": now + lifetime (at most 300 s), "jti": <random, single use>}

and sends it as the `subject_token` of a token exchange (or, once the broker serves it, as
the `assertion` of the RFC 7523 jwt-bearer grant). `AgentKey` is a subject-token provider:
every call signs a new assertion with a new `jti`, so a retried exchange never replays one.

The private key never appears in a repr, a log line or an exception."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_ASSERTION_LIFETIME_SECONDS = 300
ALGORITHM = "ES256"


class AgentKey:
    """A subject-token provider that signs RFC 7523-style assertions with an agent's key."""

    def __init__(
        self,
        identity_id: str,
        private_key_pem: bytes | str,
        kid: str,
        token_endpoint: str,
        *,
        lifetime_seconds: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if not identity_id or not kid or not token_endpoint:
            raise ValueError("identity_id, kid and token_endpoint are required")
        if not 1 <= lifetime_seconds <= MAX_ASSERTION_LIFETIME_SECONDS:
            raise ValueError(
                f"lifetime_seconds must be between 1 and {MAX_ASSERTION_LIFETIME_SECONDS}"
            )
        pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            # Never chain the original error: some carry the input's bytes.
            raise ValueError("private_key_pem is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("an agent key must be an EC P-256 key (ES256)")
        self.identity_id = identity_id
        self.kid = kid
        self.token_endpoint = token_endpoint
        self.lifetime_seconds = lifetime_seconds
        self._key = key
        self._clock = clock

    @classmethod
    def from_file(
        cls, identity_id: str, path: str | Path, kid: str, token_endpoint: str, **kw: Any
    ) -> AgentKey:
        return cls(identity_id, Path(path).read_bytes(), kid, token_endpoint, **kw)

    def __repr__(self) -> str:
        return (
            f"AgentKey(identity_id={self.identity_id!r}, kid={self.kid!r}, "
            f"token_endpoint={self.token_endpoint!r})"
        )

    def claims(self) -> dict[str, Any]:
        now = int(self._clock())
        return {
            "iss": self.identity_id,
            "sub": self.identity_id,
            "aud": self.token_endpoint,
            "iat": now,
            "exp": now + self.lifetime_seconds,
            "jti": secrets.token_urlsafe(24),
        }

    def sign(self) -> str:
        import jwt

        return jwt.encode(
            self.claims(), self._key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"}
        )

    __call__ = sign
