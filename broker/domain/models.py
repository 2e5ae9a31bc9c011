"""Frozen values the domain passes around, and the token-type URNs it speaks (RFC 8693 §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPE_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1

IDENTITY_TYPES = ("human", "service", "partner", "agent")

# Issuer profiles (broker/identity/profiles.py): which claims a rule may name, how the
# subject is read, and the default replay policy. "agent" is internal: identities that
# register their own keys get one synthetic issuer each; it cannot be configured by hand.
PROFILES = ("generic", "github-actions", "gitlab-ci", "kubernetes", "spiffe")
AGENT_PROFILE = "agent"
AGENT_ISSUER_PREFIX = "agent:"
REPLAY_POLICIES = ("single-use", "reuse-within-lifetime")

# Identifiers that end up in Redis keys, log lines and JWT claims are kept to a safe alphabet:
# no separators, spaces, control characters or glob metacharacters.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
# RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")


def is_safe_id(value: str) -> bool:
    return SAFE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class IssuerOptions:
    """Per-issuer options of the subject-token checks and of the key fetch; each default is
    the strict choice."""

    # Hosts (`host` or `host:port`, lower case) a discovered https `jwks_uri` may name besides
    # the issuer's own origin. Empty: the issuer's origin only.
    jwks_hosts: tuple[str, ...] = ()
    # Let key fetches reach private addresses (RFC 1918, unique-local, CGNAT) and loopback.
    # Link-local (cloud metadata), multicast and unspecified addresses stay refused.
    allow_private_network: bool = False
    # strict_aud off: the token may name other audiences besides ours (some platforms mint
    # one token for several relying parties). Default: we must be the only audience, or the
    # token could be replayed at a peer.
    allow_multiple_audiences: bool = False
    # The one client, besides our own audience, an `azp` claim may name.
    expected_azp: str | None = None


@dataclass(frozen=True)
class TrustedIssuer:
    """A workload-identity issuer whose tokens Errand accepts as subject tokens."""

    id: str
    # Exact `iss`. "" only for a SPIFFE trust domain whose JWT-SVIDs carry no `iss`: those
    # are routed by the trust domain of `sub` and must then carry no `iss` at all.
    # For an agent's synthetic issuer it is the identity id (iss = sub = identity).
    issuer: str
    audience: str  # the audience Errand expects in this issuer's tokens; never "any"
    jwks_uri: str | None  # None: OIDC discovery at {issuer}/.well-known/openid-configuration
    algorithms: tuple[str, ...]  # subset of the asymmetric allow-list
    replay: str = "single-use"  # single-use (jti required, used once) | reuse-within-lifetime
    refresh_cooldown_seconds: int = 60  # at most one JWKS fetch per cooldown, across all nodes
    jwks_max_age_seconds: int = 3600  # refresh cached keys after this long
    jwks_stale_seconds: int = 86400  # keep serving cached keys this long while refreshes fail
    max_token_lifetime_seconds: int = 86400  # refuse subject tokens that claim to live longer
    fetch_timeout_seconds: float = 3.0
    profile: str = "generic"  # see PROFILES; "agent" for an identity's own keys
    human: bool = False  # tokens from this issuer prove a person: they match human identities only
    trust_domain: str | None = None  # spiffe: the trust domain every `sub` must belong to
    jwks_file: str | None = None  # a JWKS / SPIFFE bundle on disk (re-read like a fetch)
    jwks_json: str | None = field(default=None, repr=False)  # inline JWKS (agent keys)
    identity_id: str | None = None  # agent: the identity these keys belong to
    options: IssuerOptions = IssuerOptions()

    @property
    def key_source(self) -> tuple[object, ...]:
        """What decides which keys are trusted; a reload that changes it drops cached keys.
        Where keys may be fetched from is part of it: narrowing that on a reload must drop
        keys fetched under the old rules."""
        return (
            self.issuer,
            self.jwks_uri,
            self.jwks_file,
            self.jwks_json,
            self.algorithms,
            self.options.jwks_hosts,
            self.options.allow_private_network,
        )


@dataclass(frozen=True)
class MatchRule:
    """A caller matches when its token comes from `issuer_id` and every claim matches.

    A value is an exact string, or an anchored glob where `*` stands for one or more
    characters other than `/` (broker/policy/patterns.py); it is compiled once."""

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
class AgentKeys:
    """Public keys an identity registered to sign its own assertions (RFC 7523 style)."""

    jwks_json: str | None = field(default=None, repr=False)  # inline JWKS
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("ES256", "ES384", "EdDSA", "RS256", "PS256")


@dataclass(frozen=True)
class DelegationPolicy:
    """Whom an identity may act for (RFC 8693 §1.1 delegation; docs/agents.md).

    `act_for` holds identity ids or anchored patterns (broker/policy/patterns.py) naming the
    subjects whose tokens this identity may present as `subject_token` with its own
    `actor_token`. `max_depth` caps the chain this identity's hop may end at (None: the
    broker's `max_delegation_depth`)."""

    act_for: tuple[str, ...]
    max_depth: int | None = None
    # The resource identifiers this identity serves (an MCP server's URL): a subject token
    # addressed only to them may be exchanged, by this identity, for a token addressed to
    # its own allowed audiences, its upstream APIs (policy/downstream.py).
    serves: tuple[str, ...] = ()


@dataclass(frozen=True)
class Identity:
    id: str
    type: str
    owner: str
    purpose: str
    expires: date | None
    rules: tuple[MatchRule, ...]
    allow: Allowance
    keys: AgentKeys | None = None
    delegation: DelegationPolicy | None = None  # None: this identity never acts for another


@dataclass(frozen=True)
class IdentityTypeRules:
    """Type-specific limits (config `identity_types:`); the configuration can only tighten them.

    default_ttl_seconds None: the broker's default_token_ttl_seconds."""

    default_ttl_seconds: int | None
    max_ttl_seconds: int
    require_task: bool = False  # the request must name task_id
    require_purpose: bool = False  # the request must name purpose
    single_audience: bool = False  # a token carries exactly one audience
    audiences: tuple[str, ...] | None = None  # if set, identities of the type may use only these
    require_dpop: bool = False  # every token of the type is bound to a key (RFC 9449)


# The built-in rules and why (docs/identities.md, "Identity types"):
# - every type defaults to the broker's default TTL (300 s unless configured);
# - human 900 s max: a person acts through an interactive session elsewhere; a broker token is
#   for one action, and a stolen laptop should not carry an hour of access;
# - service 3600 s max: a CI deploy or batch step cannot always renew mid-step; still capped
#   by broker.max_token_ttl_seconds (900 s unless raised);
# - partner 900 s max, one audience per token: an outside party's token must not be usable
#   at a second API of ours;
# - agent 600 s max, task_id and purpose required: agents chain tools and retry at machine
#   speed; every token must name the task it is for, and the client renews for long tasks.
BUILTIN_IDENTITY_TYPES: Mapping[str, IdentityTypeRules] = {
    "human": IdentityTypeRules(default_ttl_seconds=None, max_ttl_seconds=900),
    "service": IdentityTypeRules(default_ttl_seconds=None, max_ttl_seconds=3600),
    "partner": IdentityTypeRules(
        default_ttl_seconds=None, max_ttl_seconds=900, single_audience=True
    ),
    "agent": IdentityTypeRules(
        default_ttl_seconds=None, max_ttl_seconds=600, require_task=True, require_purpose=True
    ),
}


@dataclass(frozen=True)
class Client:
    """A resource server allowed to introspect; authenticated with client_secret_basic/post."""

    client_id: str
    secret_sha256: bytes = field(repr=False)


@dataclass(frozen=True)
class LimitOptions:
    """Abuse limits on the token endpoint (broker.limits in the YAML; see domain/limits.py)."""

    window_seconds: int = 60
    per_address: int = 600  # token requests per client address per window (0: off)
    per_issuer: int = 6000  # token requests naming one configured issuer per window (0: off)
    per_identity: int = 120  # exchanges per verified identity per window (0: off)
    max_live_grants_per_identity: int = 1000  # 0: no quota
    denials_before_flag: int = 20  # suspicious denials of one identity per window
    auto_suspend: bool = False  # suspend a flagged identity (and revoke its grants)


@dataclass(frozen=True)
class BrokerOptions:
    issuer: str  # our own `iss`
    default_token_ttl_seconds: int = 300
    max_token_ttl_seconds: int = 900
    clock_skew_seconds: int = 60
    max_subject_token_bytes: int = 8192
    audit_stream_maxlen: int = 100_000
    task_tombstone_seconds: int = 3600  # how long a completed task stays refused
    # The longest Errand keeps a task's record without live grants: a suspended task is kept
    # this long, and a deadline may be at most this far ahead (docs/agents.md).
    task_retention_seconds: int = 604800
    config_reload_seconds: float = 5.0  # how often the file's mtime is checked; 0: never
    limits: LimitOptions = field(default_factory=LimitOptions)
    # RFC 8693 delegation: how many actors a chain may stack on a root token (docs/agents.md).
    max_delegation_depth: int = 3


# RFC 9449 §4.2: asymmetric only; what errand_jose verifies (kept equal to its DPOP_ALGORITHMS).
DPOP_ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256")


@dataclass(frozen=True)
class DpopOptions:
    """Sender-constrained tokens (config `dpop:`; broker/domain/dpop.py)."""

    # A proof's iat may be at most this old (RFC 9449 §11.1), and 5 s in the future; its jti
    # is remembered in Redis for as long.
    proof_max_age_seconds: int = 60
    algorithms: tuple[str, ...] = DPOP_ALGORITHMS  # advertised as dpop_signing_alg_values_supported
    # RFC 9449 §8: proofs must carry a nonce the broker issued (stateless: an HMAC of the
    # time window under nonce_secret, so every node accepts every node's nonces).
    require_nonce: bool = False
    nonce_secret: bytes = field(default=b"", repr=False)
    nonce_lifetime_seconds: int = 300  # a nonce is good for this long, up to twice as long
    # Tokens for these audiences are always DPoP-bound: a request without a proof is refused.
    required_audiences: tuple[str, ...] = ()


# Scope classes (docs/policy.md): what a scope can do at its audience, weakest first.
# high_impact is write power that also matters beyond the task (payments, deletions,
# permission changes); policy may ask for a person's approval before it is issued.
SCOPE_CLASSES = ("discovery", "read", "write", "high_impact")


@dataclass(frozen=True)
class AudienceSpec:
    """An audience's declaration (config `audiences:`): how sensitive it is, the class of
    each of its scopes, and the version of its contract (or its tool definitions' hash)."""

    id: str
    sensitivity: str = "normal"
    scope_classes: Mapping[str, str] = field(default_factory=dict)  # scope -> SCOPE_CLASSES
    contract_version: str = ""
    # This version widens what a scope can do: grants issued under older versions of this
    # audience are revoked when it is loaded (workers/contracts.py).
    contract_widening: bool = False


@dataclass(frozen=True)
class PolicyOptions:
    """Config `policy:`: the runtime policy (Cedar files) and human approval."""

    dir: Path | None = None  # None: no runtime policy, allowances alone decide (as before)
    approvers: tuple[str, ...] = ()  # human identity ids that may approve or deny
    approval_ttl_seconds: int = 900
    approval_poll_interval_seconds: int = 5
    approval_webhook: ApprovalWebhook | None = None  # None: approvers are not notified


@dataclass(frozen=True)
class ApprovalWebhook:
    """Config `policy.approval_webhook`: where a new approval is announced (a worker job
    POSTs it, HMAC-signed with `secret`; broker/domain/approval_webhook.py)."""

    url: str
    secret: bytes = field(repr=False)
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class PolicyRequest:
    """What the runtime policy decides on: one exchange, every requested scope."""

    identity: Identity
    issuer_id: str
    claims: Mapping[str, Any]  # the verified token's claims (scalars become Cedar tags)
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    scope_classes: Mapping[str, str]  # scope -> class ("" when undeclared)
    purpose: str
    task_id: str
    task_named: bool  # the caller named the task (not one Errand made up)
    labels: tuple[str, ...]  # the task's labels; empty until tasks carry labels
    now: float
    chain: tuple[str, ...] = ()  # actor identity ids, outermost first; empty: no delegation
    dpop: bool = False  # the token will be sender-constrained
    approved: bool = False  # a person approved exactly this request


@dataclass(frozen=True)
class PolicyVerdict:
    """allowed, or the class of rule that denied (`policy_forbid`, `policy_no_permit`,
    `policy_error`, `approval_required`); `policies` names the deciding policy ids."""

    allowed: bool
    deny_class: str = ""
    policies: tuple[str, ...] = ()
    detail: str = ""  # for audit and `errand policy explain`, never for the caller


class RuntimePolicy(Protocol):
    """The compiled runtime policy (broker/policy/cedar_engine.py)."""

    @property
    def digest(self) -> str: ...

    @property
    def count(self) -> int: ...

    def decide(self, request: PolicyRequest) -> PolicyVerdict: ...


@dataclass(frozen=True)
class Config:
    broker: BrokerOptions
    issuers: Mapping[str, TrustedIssuer]  # by id
    identities: tuple[Identity, ...]
    clients: Mapping[str, Client]
    identity_types: Mapping[str, IdentityTypeRules] = field(
        default_factory=lambda: dict(BUILTIN_IDENTITY_TYPES)
    )
    # One synthetic issuer per identity that registered its own keys, by identity id.
    agent_issuers: Mapping[str, TrustedIssuer] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # accepted but risky settings, shown by `errand config check`
    dpop: DpopOptions = field(default_factory=DpopOptions)
    # Runtime policy (docs/policy.md): declared audiences, the `policy:` section and the
    # compiled Cedar policies (None: no policy dir configured; allowances alone decide).
    audiences: Mapping[str, AudienceSpec] = field(default_factory=dict)
    policy_options: PolicyOptions = field(default_factory=PolicyOptions)
    runtime_policy: RuntimePolicy | None = field(default=None, compare=False)

    def issuer_by_url(self, iss: str) -> TrustedIssuer | None:
        """The issuer an unverified `iss` selects: a configured issuer, or an agent's keys."""
        if not iss:
            return None
        for issuer in self.issuers.values():
            if issuer.issuer == iss:
                return issuer
        return self.agent_issuers.get(iss)

    def issuer_by_trust_domain(self, trust_domain: str) -> TrustedIssuer | None:
        """The SPIFFE issuer for JWT-SVIDs that carry no `iss` (routed by their `sub`)."""
        for issuer in self.issuers.values():
            if (
                issuer.profile == "spiffe"
                and issuer.trust_domain == trust_domain
                and not issuer.issuer
            ):
                return issuer
        return None

    def any_issuer(self, issuer_id: str) -> TrustedIssuer | None:
        found = self.issuers.get(issuer_id)
        if found is not None:
            return found
        for issuer in self.agent_issuers.values():
            if issuer.id == issuer_id:
                return issuer
        return None

    def type_rules(self, identity_type: str) -> IdentityTypeRules:
        return self.identity_types.get(identity_type) or BUILTIN_IDENTITY_TYPES[identity_type]

    def identity(self, identity_id: str) -> Identity | None:
        for ident in self.identities:
            if ident.id == identity_id:
                return ident
        return None


@dataclass(frozen=True)
class DpopBinding:
    """A checked DPoP proof sent with a token request (RFC 9449 §5): the key the token will
    be bound to, and the proof's jti to spend."""

    jkt: str  # RFC 7638 SHA-256 thumbprint of the proof's public key
    jti: str = field(repr=False)
    iat: int


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
    # Errand's task lifecycle parameters: read when the exchange opens the task.
    task_deadline: int | None = None  # unix time; no grant of the task lives past it
    task_labels: tuple[tuple[str, str], ...] = ()  # (key, value), sorted by key
    # How the workload JWT arrived: RFC 8693 `subject_token`, or the RFC 7523 jwt-bearer
    # `assertion`. One verification path; only the error code differs (invalid_grant there).
    grant_type: str = GRANT_TYPE_TOKEN_EXCHANGE
    dpop: DpopBinding | None = None  # a checked `DPoP` header: bind the token to its key
    approval_id: str | None = None  # polling an approval (docs/policy.md)
    # RFC 8693 §2.1 delegation: the actor's own workload token (domain/delegation.py).
    actor_token: str | None = field(default=None, repr=False)
    actor_token_type: str | None = None
    # Errand's extension: the one identity that may act for the issued token (RFC 8693 §4.4).
    may_act: str | None = None


@dataclass(frozen=True)
class VerifiedSubject:
    """A workload token whose signature and registered claims have been checked."""

    issuer: TrustedIssuer
    claims: Mapping[str, Any]
    jti: str | None
    exp: int
    token_sha256: str
    # What rules are matched against: the profile's view of the claims (for Kubernetes the
    # namespace and service account read from `kubernetes.io`, for SPIFFE the SPIFFE ID).
    # None: the claims themselves.
    attributes: Mapping[str, Any] | None = None
    # Non-secret workload context for the audit event (pod and node binding, CI run ids).
    context: Mapping[str, Any] = field(default_factory=dict)
    # A jwt-bearer assertion addressed to the token endpoint: its jti is spent on first use
    # whatever the issuer's replay policy (identity/verifier.py).
    single_use: bool = False

    @property
    def match_attributes(self) -> Mapping[str, Any]:
        return self.claims if self.attributes is None else self.attributes


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
    dpop_jkt: str | None = None  # RFC 9449 §6: the token is bound to this key (cnf.jkt)
    approval_id: str = ""  # the approval a person gave for it, if policy asked for one
    # (audience, contract version) the grant was issued under, for declared audiences only
    contracts: tuple[tuple[str, str], ...] = ()
    # Delegation (RFC 8693 §4.1, domain/delegation.py). A hop's `identity_id` is its actor
    # (quotas, limits and the identity index are the actor's); `subject` is the identity it
    # acts for, the token's `sub`. `actors` is the `act` chain, newest actor first; `parent`
    # the grant whose token was the subject_token; `ancestors` every grant above, root first.
    subject: str = ""
    actors: tuple[str, ...] = ()
    parent: str = ""
    ancestors: tuple[str, ...] = ()
    may_act: str = ""  # RFC 8693 §4.4: the one identity that may act for this token

    @property
    def subject_id(self) -> str:
        """The token's `sub`: the identity acted for, or the grant's own identity."""
        return self.subject or self.identity_id

    @property
    def depth(self) -> int:
        return len(self.actors)

    @property
    def token_type(self) -> str:
        """RFC 9449 §5 / RFC 6750: how the token must be presented."""
        return "DPoP" if self.dpop_jkt else "Bearer"


def act_claim(actors: tuple[str, ...]) -> dict[str, Any] | None:
    """RFC 8693 §4.1 nested `act`: the current actor outermost, prior actors nested inside."""
    claim: dict[str, Any] | None = None
    for actor in reversed(actors):
        claim = {"sub": actor, **({"act": claim} if claim is not None else {})}
    return claim


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
    task_suspended: bool = False  # its tokens are inactive until the task resumes
