"""Frozen values the domain passes around, and the token-type URNs it speaks (RFC 8693 §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

IDENTITY_TYPES = ("human", "service", "partner", "agent")

# Identifiers that end up in Redis keys, log lines and JWT claims are kept to a safe alphabet:
# no separators, spaces, control characters or glob metacharacters.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
# RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")


def is_safe_id(value: str) -> bool:
    return SAFE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class TrustedIssuer:
    """A workload-identity issuer whose tokens Errand accepts as subject tokens."""

    id: str
    issuer: str  # exact `iss`
    audience: str  # the audience Errand expects in this issuer's tokens; never "any"
    jwks_uri: str | None  # None: OIDC discovery at {issuer}/.well-known/openid-configuration
    algorithms: tuple[str, ...]  # subset of the asymmetric allow-list
    replay: str = "single-use"  # single-use (jti required, used once) | reuse-within-lifetime
    refresh_cooldown_seconds: int = 60  # at most one JWKS fetch per cooldown, across all nodes
    jwks_max_age_seconds: int = 3600  # refresh cached keys after this long
    jwks_stale_seconds: int = 86400  # keep serving cached keys this long while refreshes fail
    max_token_lifetime_seconds: int = 86400  # refuse subject tokens that claim to live longer
    fetch_timeout_seconds: float = 3.0


@dataclass(frozen=True)
class MatchRule:
    """A caller matches when its token comes from `issuer_id` and every claim equals exactly."""

    id: str
    issuer_id: str
    claims: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Allowance:
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    default_scopes: tuple[str, ...]
    max_ttl_seconds: int


@dataclass(frozen=True)
class Identity:
    id: str
    type: str
    owner: str
    purpose: str
    expires: date | None
    rules: tuple[MatchRule, ...]
    allow: Allowance


@dataclass(frozen=True)
class Client:
    """A resource server allowed to introspect; authenticated with client_secret_basic/post."""

    client_id: str
    secret_sha256: bytes = field(repr=False)


@dataclass(frozen=True)
class BrokerOptions:
    issuer: str  # our own `iss`
    default_token_ttl_seconds: int = 300
    max_token_ttl_seconds: int = 900
    clock_skew_seconds: int = 60
    max_subject_token_bytes: int = 8192
    audit_stream_maxlen: int = 100_000
    task_tombstone_seconds: int = 3600  # how long a completed task stays refused


@dataclass(frozen=True)
class Config:
    broker: BrokerOptions
    issuers: Mapping[str, TrustedIssuer]  # by id
    identities: tuple[Identity, ...]
    clients: Mapping[str, Client]

    def issuer_by_url(self, iss: str) -> TrustedIssuer | None:
        for issuer in self.issuers.values():
            if issuer.issuer == iss:
                return issuer
        return None

    def identity(self, identity_id: str) -> Identity | None:
        for ident in self.identities:
            if ident.id == identity_id:
                return ident
        return None


@dataclass(frozen=True)
class ExchangeRequest:
    """An RFC 8693 §2.1 request after form parsing, plus Errand's extension parameters."""

    subject_token: str = field(repr=False)
    subject_token_type: str
    audiences: tuple[str, ...] = ()  # `audience` and `resource` values, in order
    scopes: tuple[str, ...] | None = None  # None: not requested
    task_id: str | None = None
    purpose: str | None = None
    requested_lifetime: int | None = None
    requested_token_type: str | None = None
    client_address: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class VerifiedSubject:
    """A workload token whose signature and registered claims have been checked."""

    issuer: TrustedIssuer
    claims: Mapping[str, Any]
    jti: str | None
    exp: int
    token_sha256: str


@dataclass(frozen=True)
class Grant:
    """One issued token's live record."""

    jti: str
    identity_id: str
    identity_type: str
    owner: str
    task_id: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    iat: int
    exp: int
    client_id: str
    issuer_id: str
    epoch: int
    purpose: str = ""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    grant: Grant = field()
    expires_in: int = 0
    issued_token_type: str = TOKEN_TYPE_ACCESS_TOKEN


@dataclass(frozen=True)
class GrantState:
    """What the store knows about a grant at introspection time."""

    grant: Grant | None  # None: unknown, expired or revoked
    current_epoch: int
    task_completed: bool
