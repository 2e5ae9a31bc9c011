"""The web console's session cookie, CSRF tokens and origin check, as plain functions: no
Flask, no Redis, so they can be tested against any input (tests/unit/http/test_console_session.py).

A session is a record in Redis (broker/store/console_sessions.py) named by the SHA-256 of a
random 256-bit id. The cookie carries the id and an HMAC of it under a key derived from the
admin credential, so:

- a cookie that was not issued here is refused before any Redis round trip (bounded cost);
- changing the admin credential ends every console session (their HMACs no longer verify);
- logout deletes the record: the cookie is then worthless even if it was copied;
- Redis holds digests only: reading it gives nobody a usable cookie.

The record carries the login time (absolute timeout), the last use (idle timeout) and the
per-session CSRF token that every form of the session must send back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

_KEY_LABEL = b"errand console session v1"
_LOGIN_LABEL = b"errand console login v1"
SESSION_ID_BYTES = 32
MAX_COOKIE_CHARS = 128  # a real cookie is 43 + 1 + 43 characters
MAX_TOKEN_CHARS = 128


def session_key(admin_token_sha256: bytes) -> bytes:
    """The cookie-signing key: derived from the admin credential's digest, with a label of
    its own so that it is never the digest the admin check compares against."""
    return hmac.new(admin_token_sha256, _KEY_LABEL, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Canonical unpadded base64url only: one encoding per value, so a cookie cannot be
    re-spelled into a different string that means the same session."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None


def _mac(key: bytes, session_id: bytes) -> bytes:
    return hmac.new(key, b"session:" + session_id, hashlib.sha256).digest()


def digest_of(session_id: bytes) -> str:
    return hashlib.sha256(session_id).hexdigest()


@dataclass(frozen=True)
class NewSession:
    cookie: str  # what the browser keeps (HttpOnly); never logged, never rendered
    digest: str  # what Redis and the audit know the session by
    record: dict[str, str]


def new_session(key: bytes, *, now: float) -> NewSession:
    session_id = secrets.token_bytes(SESSION_ID_BYTES)
    cookie = _b64(session_id) + "." + _b64(_mac(key, session_id))
    record = {
        "created": repr(float(now)),
        "last_seen": repr(float(now)),
        "csrf": secrets.token_urlsafe(32),
    }
    return NewSession(cookie, digest_of(session_id), record)


def session_digest(cookie: str | None, key: bytes) -> str | None:
    """The digest of the session a cookie names, or None for anything this broker did not
    issue under `key`. Never raises."""
    if not cookie or len(cookie) > MAX_COOKIE_CHARS or cookie.count(".") != 1:
        return None
    id_text, mac_text = cookie.split(".")
    session_id, mac = _unb64(id_text), _unb64(mac_text)
    if session_id is None or mac is None or len(session_id) != SESSION_ID_BYTES:
        return None
    if not hmac.compare_digest(mac, _mac(key, session_id)):
        return None
    return digest_of(session_id)


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number == number else None  # NaN is no time


def session_alive(
    record: Mapping[str, str] | None, *, now: float, idle_seconds: int, max_seconds: int
) -> bool:
    """A session is alive when its record is whole, it was used within the idle timeout and
    it began within the absolute timeout."""
    if not record or not record.get("csrf"):
        return False
    created, last_seen = _number(record.get("created")), _number(record.get("last_seen"))
    if created is None or last_seen is None:
        return False
    return now - last_seen <= idle_seconds and now - created <= max_seconds


def tokens_match(expected: str | None, presented: object) -> bool:
    """The CSRF check: a string of bounded size, compared in constant time."""
    if not expected or not isinstance(presented, str) or len(presented) > MAX_TOKEN_CHARS:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


# -- the login form's CSRF token ---------------------------------------------------------------
# Before login there is no session to hold a token, so the login form's token is bound to a
# random value in a short-lived cookie of its own (a signed double submit): a page elsewhere
# can neither read that cookie nor compute the token.
def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def login_token(key: bytes, nonce: str) -> str:
    return _b64(hmac.new(key, _LOGIN_LABEL + b":" + nonce.encode(), hashlib.sha256).digest())


def login_token_ok(key: bytes, nonce: str | None, presented: object) -> bool:
    if not nonce or len(nonce) > MAX_TOKEN_CHARS:
        return False
    return tokens_match(login_token(key, nonce), presented)


# -- where a form post came from ------------------------------------------------------------------
def origin_of(url: str) -> str | None:
    """scheme://host[:port] of an absolute http(s) URL, lower-cased; None otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def same_origin_post(origin: str | None, referer: str | None, allowed: Iterable[str]) -> bool:
    """A form post is ours when its Origin (or, where a browser sent none, its Referer) is
    one of `allowed`. Neither, or `Origin: null` (a sandboxed frame, a redirect across
    origins): refused."""
    accepted = {a for a in (origin_of(x) for x in allowed) if a}
    if origin is not None:
        return origin != "null" and origin_of(origin) in accepted
    if referer:
        return origin_of(referer) in accepted
    return False
