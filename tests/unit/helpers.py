"""Helpers for the unit and property suites: raw JWS building, audit readers, HTTP shortcuts.

Nothing here talks to a network or to the Redis on 127.0.0.1:6379; Services run on fakeredis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from broker.store import keys
from broker.tokens.keyring import SigningKey, thumbprint
from tests.fixtures.builders import ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET

# -- raw JWS ---------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A base64url segment: bytes as they are, str as UTF-8, anything else as compact JSON."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode("utf-8"))
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def es256_sign(key: SigningKey, header: Any, payload: Any) -> str:
    """Sign arbitrary header/payload bytes with an ES256 key, without PyJWT's checks."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64url(sig)}"


def hs256_sign(secret: bytes, header: Any, payload: Any) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def rs256_sign(private_key: rsa.RSAPrivateKey, header: Any, payload: Any) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), private_key)
    return f"{signing_input}.{b64url(sig)}"


def public_pem(key: SigningKey) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_es256_key() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    probe = SigningKey(kid="", alg="ES256", private_key=private)
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg="ES256", private_key=private)


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unverified header and claims of a compact JWT (test inspection only)."""
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


# -- audit and logs --------------------------------------------------------------------------


def stream_events(svc: Any) -> list[dict[str, Any]]:
    """Every audit event in the fakeredis stream 'errand:audit', oldest first."""
    r = svc.extras["redis"]
    return [json.loads(fields["e"]) for _id, fields in r.xrange(keys.AUDIT_STREAM)]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        """Each record's message plus every attribute it carries (extras included)."""
        out = []
        for rec in self.records:
            out.append(rec.getMessage())
            out.append(repr(rec.__dict__))
        return out

    def audit_events(self) -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in self.records if r.name == "errand.audit"]


def secret_fragments(token: str) -> list[str]:
    """The token and each of its segments: none may appear in audit or logs."""
    return [token, *[p for p in token.split(".") if len(p) > 16]]


def assert_not_leaked(token: str, texts: list[str]) -> None:
    for text in texts:
        for fragment in secret_fragments(token):
            assert fragment not in text, "a token (or a segment of it) leaked into audit/logs"


def redis_keys(svc: Any, pattern: str = "errand:*") -> set[str]:
    return set(svc.extras["redis"].scan_iter(pattern))


STATE_PATTERNS = (
    "errand:grant:*",
    "errand:replay:*",
    "errand:task:*",
    "errand:ident:*",
    "errand:owner:*",
    "errand:expiry",
)


def grant_state_keys(svc: Any) -> set[str]:
    """Keys an issued token leaves behind (grant, indexes, replay entry)."""
    out: set[str] = set()
    for pattern in STATE_PATTERNS:
        out |= redis_keys(svc, pattern)
    return out


# -- HTTP shortcuts --------------------------------------------------------------------------


def introspect(client: Any, token: str) -> Any:
    return client.post("/introspect", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET))


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_oauth_error(resp: Any, status: int, error: str) -> dict[str, Any]:
    """RFC 6749 §5.2 shape, no-store, and the expected code."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str) and body["error_description"]
    assert resp.headers.get("Cache-Control") == "no-store"
    return dict(body)


def make_app(svc: Any, tmp_path: Path) -> Any:
    """The same app the shared `app` fixture builds, for Services built with another config."""
    from broker.app import create_app
    from broker.settings import Settings

    admin = tmp_path / f"admin-token-{id(svc)}"
    admin.write_text(ADMIN_TOKEN)
    settings = Settings(
        config_path=Path("unused.yaml"),
        redis_url="redis://fake",
        signing_key_dir=Path("unused"),
        admin_token_file=admin,
    )
    return create_app(settings, services=svc)


class MemoryShared:
    """An in-memory SharedJwksState whose lock follows a FixedClock (for JwksCache tests)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.docs: dict[str, tuple[str, float]] = {}
        self.locks: dict[str, float] = {}
        self.fail: Exception | None = None

    def load(self, issuer_id: str) -> tuple[str, float] | None:
        if self.fail:
            raise self.fail
        return self.docs.get(issuer_id)

    def store(self, issuer_id: str, jwks_json: str, fetched_at: float, ttl_seconds: int) -> None:
        if self.fail:
            raise self.fail
        self.docs[issuer_id] = (jwks_json, fetched_at)

    def try_lock_refresh(self, issuer_id: str, cooldown_seconds: int) -> bool:
        if self.fail:
            raise self.fail
        now = self.clock.now()
        if self.locks.get(issuer_id, 0) > now:
            return False
        self.locks[issuer_id] = now + cooldown_seconds
        return True
