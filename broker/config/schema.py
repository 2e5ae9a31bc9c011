"""The marshmallow schemas of the configuration file, one per section.

Each checks the shape of its section and the combinations inside it; checks that need
more than one section (an identity's issuer, overlapping rules) are in issuers.py and
identities.py."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from broker.config.runtime_policy import AudienceSchema, PolicySchema
from broker.config.values import (
    _JWKS_HOST,
    _TRUST_DOMAIN,
    ClaimValue,
    DateField,
    _flag,
    _id,
    _positive,
    _scope,
    _Strict,
    _trusted_url,
    _url,
)
from broker.domain.models import (
    DPOP_ALGORITHMS,
    IDENTITY_TYPES,
    PROFILES,
    REPLAY_POLICIES,
    AgentKeys,
    BrokerOptions,
    IssuerOptions,
    LimitOptions,
    TrustedIssuer,
)
from broker.identity.profiles import PROFILES as PROFILE_TABLE
from errand_jose import ASYMMETRIC_ALGORITHMS
from errand_jose import PRIVATE_JWK_MEMBERS as _PRIVATE_JWK_MEMBERS


class LimitsSchema(_Strict):
    window_seconds = fields.Integer(
        load_default=60, validate=validate.Range(min=1, max=3600), strict=True
    )
    per_address = fields.Integer(load_default=600, validate=validate.Range(min=0), strict=True)
    per_issuer = fields.Integer(load_default=6000, validate=validate.Range(min=0), strict=True)
    per_identity = fields.Integer(load_default=120, validate=validate.Range(min=0), strict=True)
    max_live_grants_per_identity = fields.Integer(
        load_default=1000, validate=validate.Range(min=0), strict=True
    )
    denials_before_flag = fields.Integer(
        load_default=20, validate=validate.Range(min=1), strict=True
    )
    auto_suspend = fields.Boolean(load_default=False)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> LimitOptions:
        return LimitOptions(**data)


class BrokerSchema(_Strict):
    issuer = fields.String(required=True, validate=_url)
    default_token_ttl_seconds = fields.Integer(load_default=300, validate=_positive, strict=True)
    max_token_ttl_seconds = fields.Integer(
        load_default=900, validate=validate.Range(min=1, max=86400), strict=True
    )
    clock_skew_seconds = fields.Integer(
        load_default=60, validate=validate.Range(min=0, max=60), strict=True
    )
    max_subject_token_bytes = fields.Integer(
        load_default=8192, validate=validate.Range(min=512, max=65536), strict=True
    )
    audit_stream_maxlen = fields.Integer(load_default=100_000, validate=_positive, strict=True)
    task_tombstone_seconds = fields.Integer(load_default=3600, validate=_positive, strict=True)
    task_retention_seconds = fields.Integer(
        load_default=604800, validate=validate.Range(min=60, max=31 * 86400), strict=True
    )
    config_reload_seconds = fields.Float(load_default=5.0, validate=validate.Range(min=0, max=3600))
    # RFC 8693 delegation chains (docs/agents.md): actors stacked on one root token, at most.
    max_delegation_depth = fields.Integer(
        load_default=3, validate=validate.Range(min=1, max=5), strict=True
    )

    limits = fields.Nested(LimitsSchema, load_default=lambda: LimitOptions())

    @validates_schema
    def _ttls(self, data: dict[str, Any], **_: Any) -> None:
        if data["default_token_ttl_seconds"] > data["max_token_ttl_seconds"]:
            raise ValidationError(
                "must not exceed max_token_ttl_seconds", "default_token_ttl_seconds"
            )
        if data["task_tombstone_seconds"] < data["max_token_ttl_seconds"]:
            raise ValidationError(
                "must be at least max_token_ttl_seconds, so a completed task outlives its tokens",
                "task_tombstone_seconds",
            )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> BrokerOptions:
        return BrokerOptions(**data)


class IssuerSchema(_Strict):
    id = fields.String(required=True, validate=_id)
    # Required, except for a SPIFFE trust domain whose JWT-SVIDs carry no `iss`.
    issuer = fields.String(load_default=None, validate=_trusted_url)
    audience = fields.String(required=True, validate=validate.Length(min=1, max=512))
    profile = fields.String(load_default="generic", validate=validate.OneOf(PROFILES))
    human = _flag(False)
    trust_domain = fields.String(load_default=None, validate=_TRUST_DOMAIN)
    jwks_uri = fields.String(load_default=None, validate=_trusted_url)
    jwks_file = fields.String(load_default=None, validate=validate.Length(min=1, max=4096))
    algorithms = fields.List(
        fields.String(validate=validate.OneOf(ASYMMETRIC_ALGORITHMS)),
        load_default=lambda: ["RS256", "ES256"],
        validate=validate.Length(min=1),
    )
    # None: the profile's default (docs/identities.md, "Replay").
    replay = fields.String(load_default=None, validate=validate.OneOf(REPLAY_POLICIES))
    refresh_cooldown_seconds = fields.Integer(
        load_default=60, validate=validate.Range(min=1, max=3600), strict=True
    )
    jwks_max_age_seconds = fields.Integer(load_default=3600, validate=_positive, strict=True)
    jwks_stale_seconds = fields.Integer(load_default=86400, validate=_positive, strict=True)
    max_token_lifetime_seconds = fields.Integer(load_default=86400, validate=_positive, strict=True)
    fetch_timeout_seconds = fields.Float(load_default=3.0, validate=validate.Range(min=0.1, max=10))
    # IssuerOptions (broker/domain/models.py)
    jwks_hosts = fields.List(fields.String(validate=_JWKS_HOST), load_default=list)
    allow_private_network = _flag(False)
    allow_multiple_audiences = _flag(False)
    expected_azp = fields.String(load_default=None, validate=validate.Length(min=1, max=512))

    @validates_schema
    def _profile_fields(self, data: dict[str, Any], **_: Any) -> None:
        profile = data.get("profile", "generic")
        if profile == "spiffe":
            if not data.get("trust_domain"):
                raise ValidationError("a spiffe issuer names its trust domain", "trust_domain")
            if not (data.get("jwks_uri") or data.get("jwks_file") or data.get("issuer")):
                raise ValidationError(
                    "a spiffe issuer needs its bundle: jwks_file or jwks_uri", "jwks_file"
                )
        else:
            if data.get("issuer") is None:
                raise ValidationError("Missing data for required field.", "issuer")
            if data.get("trust_domain") is not None:
                raise ValidationError("only a spiffe issuer has a trust domain", "trust_domain")
        if data.get("jwks_uri") and data.get("jwks_file"):
            raise ValidationError("give jwks_uri or jwks_file, not both", "jwks_file")
        if data.get("human") and profile != "generic":
            raise ValidationError(
                f"a {profile} issuer proves workloads, never people: only a generic issuer "
                "may be marked human",
                "human",
            )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> TrustedIssuer:
        data["algorithms"] = tuple(data["algorithms"])
        data["issuer"] = data["issuer"] or ""
        if data["replay"] is None:
            data["replay"] = PROFILE_TABLE[data["profile"]].default_replay
        options = IssuerOptions(
            jwks_hosts=tuple(data.pop("jwks_hosts")),
            allow_private_network=data.pop("allow_private_network"),
            allow_multiple_audiences=data.pop("allow_multiple_audiences"),
            expected_azp=data.pop("expected_azp"),
        )
        return TrustedIssuer(**data, options=options)


class MatchSchema(_Strict):
    issuer = fields.String(required=True, validate=_id)
    claims = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=128)),
        values=ClaimValue(),
        required=True,
        validate=validate.Length(min=1, error="must name at least one claim"),
    )


class AllowSchema(_Strict):
    audiences = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)),
        required=True,
        validate=validate.Length(min=1),
    )
    scopes = fields.List(fields.String(validate=_scope), required=True)
    default_scopes = fields.List(fields.String(validate=_scope), load_default=list)
    max_ttl_seconds = fields.Integer(load_default=900, validate=_positive, strict=True)

    @validates_schema
    def _defaults_within(self, data: dict[str, Any], **_: Any) -> None:
        extra = set(data.get("default_scopes", [])) - set(data.get("scopes", []))
        if extra:
            raise ValidationError("must be a subset of scopes", "default_scopes")


class KeysSchema(_Strict):
    """An identity's own public keys: inline JWKS or a URL (fetched like an issuer's JWKS)."""

    jwks = fields.Dict(load_default=None)
    jwks_uri = fields.String(load_default=None, validate=_trusted_url)
    # Let the jwks_uri fetch reach private addresses (broker/identity/egress.py).
    allow_private_network = _flag(False)
    algorithms = fields.List(
        fields.String(validate=validate.OneOf(ASYMMETRIC_ALGORITHMS)),
        load_default=lambda: list(AgentKeys.algorithms),
        validate=validate.Length(min=1),
    )

    @validates_schema
    def _one_source(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("jwks") is None) == (data.get("jwks_uri") is None):
            raise ValidationError("give exactly one of jwks or jwks_uri", "jwks")
        jwks = data.get("jwks")
        if jwks is None:
            return
        keys = jwks.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValidationError("must be a JWKS: an object with a non-empty 'keys' list", "jwks")
        for key in keys:
            if not isinstance(key, dict):
                raise ValidationError("every key must be a JWK object", "jwks")
            if any(m in key for m in _PRIVATE_JWK_MEMBERS):
                raise ValidationError(
                    "holds private or symmetric key material: register public keys only", "jwks"
                )


class DelegationSchema(_Strict):
    """Whom an identity may act for (docs/agents.md, "Delegation chains")."""

    act_for = fields.List(
        fields.String(validate=validate.Length(min=1, max=128)),
        required=True,
        validate=validate.Length(min=1, max=64),
    )
    max_depth = fields.Integer(
        load_default=None, validate=validate.Range(min=1, max=5), strict=True
    )
    # Resources this identity serves (policy/downstream.py): the MCP servers it runs.
    serves = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)),
        load_default=list,
        validate=validate.Length(max=16),
    )


class IdentitySchema(_Strict):
    id = fields.String(required=True, validate=_id)
    type = fields.String(required=True, validate=validate.OneOf(IDENTITY_TYPES))
    owner = fields.String(required=True, validate=_id)
    purpose = fields.String(required=True, validate=validate.Length(min=1, max=512))
    expires = DateField(load_default=None)
    # At least one rule, unless the identity registers its own keys.
    match = fields.List(fields.Nested(MatchSchema), load_default=list)
    keys = fields.Nested(KeysSchema, load_default=None)
    allow = fields.Nested(AllowSchema, required=True)
    delegation = fields.Nested(DelegationSchema, load_default=None)

    @validates_schema
    def _some_way_in(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("match") and data.get("keys") is None:
            raise ValidationError(
                "Shorter than minimum length 1. (give at least one rule, or register keys)", "match"
            )


class TypeRulesSchema(_Strict):
    default_ttl_seconds = fields.Integer(load_default=None, validate=_positive, strict=True)
    max_ttl_seconds = fields.Integer(load_default=None, validate=_positive, strict=True)
    require_task = _flag(None)
    require_purpose = _flag(None)
    single_audience = _flag(None)
    require_dpop = _flag(None)  # every token of the type bound to a key (RFC 9449)
    audiences = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)),
        load_default=None,
        validate=validate.Length(min=1),
    )


class ClientSchema(_Strict):
    client_id = fields.String(required=True, validate=_id)
    secret_sha256 = fields.String(
        load_default=None,
        validate=validate.Regexp(r"[0-9a-f]{64}\Z", error="must be 64 hex digits"),
    )
    secret_file = fields.String(load_default=None)

    @validates_schema
    def _one_secret(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("secret_sha256") is None) == (data.get("secret_file") is None):
            raise ValidationError("give exactly one of secret_sha256 or secret_file", "client_id")


class DpopSchema(_Strict):
    """Sender-constrained tokens (RFC 9449); DpopOptions in broker/domain/models.py. The
    nonce secret is read from `nonce_secret_file` by config/parse.py, like a client secret."""

    proof_max_age_seconds = fields.Integer(
        load_default=60, validate=validate.Range(min=5, max=300), strict=True
    )
    algorithms = fields.List(
        fields.String(validate=validate.OneOf(DPOP_ALGORITHMS)),
        load_default=lambda: list(DPOP_ALGORITHMS),
        validate=validate.Length(min=1),
    )
    require_nonce = _flag(False)
    nonce_secret_file = fields.String(load_default=None, validate=validate.Length(min=1, max=4096))
    nonce_lifetime_seconds = fields.Integer(
        load_default=300, validate=validate.Range(min=10, max=3600), strict=True
    )
    required_audiences = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)), load_default=list
    )

    @validates_schema
    def _secret(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("require_nonce") and not data.get("nonce_secret_file"):
            raise ValidationError(
                "nonces need a secret every node shares: set nonce_secret_file",
                "nonce_secret_file",
            )


class ConfigSchema(_Strict):
    broker = fields.Nested(BrokerSchema, required=True)
    issuers = fields.List(fields.Nested(IssuerSchema), required=True)
    identity_types = fields.Dict(
        keys=fields.String(validate=validate.OneOf(IDENTITY_TYPES)),
        values=fields.Nested(TypeRulesSchema),
        load_default=dict,
    )
    identities = fields.List(fields.Nested(IdentitySchema), load_default=list)
    clients = fields.List(fields.Nested(ClientSchema), load_default=list)
    dpop = fields.Nested(DpopSchema, load_default=None)
    # Runtime policy (broker/config/runtime_policy.py, docs/policy.md)
    audiences = fields.List(fields.Nested(AudienceSchema), load_default=list)
    policy = fields.Nested(PolicySchema, load_default=None)
