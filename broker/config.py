"""The broker's YAML configuration: issuers, the identity inventory and introspection clients.

Validated with marshmallow at start-up. Every error names the key path and what is wrong,
and the broker refuses to start on a bad file (see docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from broker.domain.models import (
    AGENT_ISSUER_PREFIX,
    AGENT_PROFILE,
    BUILTIN_IDENTITY_TYPES,
    IDENTITY_TYPES,
    PROFILES,
    REPLAY_POLICIES,
    SAFE_ID,
    SCOPE_TOKEN,
    AgentKeys,
    Allowance,
    BrokerOptions,
    Client,
    Config,
    Identity,
    IdentityTypeRules,
    IssuerOptions,
    LimitOptions,
    MatchRule,
    TrustedIssuer,
)
from broker.errors import BrokerError
from broker.identity.egress import is_loopback_host
from broker.identity.jwks import parse_jwks
from broker.identity.profiles import PROFILES as PROFILE_TABLE
from broker.identity.profiles import rule_problems
from broker.policy.patterns import values_overlap
from errand_jose import ASYMMETRIC_ALGORITHMS
from errand_jose import PRIVATE_JWK_MEMBERS as _PRIVATE_JWK_MEMBERS


class ConfigError(BrokerError):
    """The configuration file is unusable; the message lists every problem with its key path."""


# marshmallow runs error strings through str.format: no braces in them.
SAFE_ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ : @ + - starting with a letter or digit"
_id = validate.Regexp(SAFE_ID.pattern + r"\Z", error=SAFE_ID_RULE)
_scope = validate.Regexp(SCOPE_TOKEN.pattern + r"\Z", error="is not a valid RFC 6749 scope token")
_positive = validate.Range(min=1)


def _url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or parts.query:
        raise ValidationError("must be an absolute http(s) URL without query or fragment")


TRUSTED_URL_RULE = (
    "must be an https URL without user info, query or fragment "
    "(http only for a loopback host: 127.0.0.0/8, ::1, localhost)"
)


def _trusted_url(value: str) -> None:
    """Where trusted keys come from: https, so nobody on the path can swap the keys. Plain
    http is for a development issuer on this machine only."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as err:
        raise ValidationError(TRUSTED_URL_RULE) from err
    plain_ok = parts.scheme == "http" and is_loopback_host(parts.hostname)
    if (
        not (parts.scheme == "https" or plain_ok)
        or not parts.hostname
        or "@" in parts.netloc
        or "?" in value
        or "#" in value
    ):
        raise ValidationError(TRUSTED_URL_RULE)


_JWKS_HOST = validate.Regexp(
    r"[a-z0-9]([a-z0-9.-]{0,252})(:[0-9]{1,5})?\Z",
    error="must be a lower-case host name or IPv4 address, optionally with :port",
)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class _YamlBool(fields.Boolean):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        # `1 in {True}` holds in Python: check the type, not set membership.
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def _flag(default: bool | None) -> fields.Boolean:
    """A YAML boolean only: the strings "yes"/"1" and the number 1 are not read as true."""
    return _YamlBool(load_default=default)


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
    config_reload_seconds = fields.Float(load_default=5.0, validate=validate.Range(min=0, max=3600))

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


PLAIN_HTTP_WARNING = (
    "plain http (accepted for a loopback host only): for development; use https in production"
)

_TRUST_DOMAIN = validate.Regexp(
    r"[a-z0-9._-]{1,255}\Z", error="must be a SPIFFE trust domain name (lowercase, no scheme)"
)


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


class ClaimValue(fields.Field[str]):
    """A claim's expected value: a string, or an integer written as a number in YAML."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("must be a string or an integer")
        text = str(value)
        if not text or len(text) > 512:
            raise ValidationError("must be 1 to 512 characters")
        return text


class DateField(fields.Field[date]):
    """A date written as YAML's date (2027-06-30) or as an ISO string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if isinstance(value, datetime):
            raise ValidationError("must be a date (YYYY-MM-DD), not a timestamp")
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise ValidationError("must be a date (YYYY-MM-DD)")


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


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, Mapping):
        out: list[str] = []
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                path = prefix or "(top level)"
            out.extend(_flatten(value, path))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix}: {m}" for m in messages]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, prefix)]
    return [f"{prefix}: {messages}"]


def _rules_overlap(a: MatchRule, b: MatchRule) -> bool:
    """Two rules can match one token unless some claim they share has values that no claim
    value can match both of (exact values differ, or patterns are provably disjoint)."""
    if a.issuer_id != b.issuer_id:
        return False
    da, db = dict(a.claims), dict(b.claims)
    return all(values_overlap(da[k], db[k]) for k in da.keys() & db.keys())


def _type_rules(
    configured: Mapping[str, Mapping[str, Any]], errors: list[str]
) -> dict[str, IdentityTypeRules]:
    """Built-in type rules, tightened by the `identity_types:` section (never loosened)."""
    out = dict(BUILTIN_IDENTITY_TYPES)
    for name, given in configured.items():
        where = f"identity_types.{name}"
        base = BUILTIN_IDENTITY_TYPES[name]
        max_ttl = given.get("max_ttl_seconds") or base.max_ttl_seconds
        if max_ttl > base.max_ttl_seconds:
            errors.append(
                f"{where}.max_ttl_seconds: can only tighten the built-in {base.max_ttl_seconds}"
            )
        default = given.get("default_ttl_seconds")
        if default is not None and default > max_ttl:
            errors.append(f"{where}.default_ttl_seconds: must not exceed max_ttl_seconds")
        flags = {}
        for flag in ("require_task", "require_purpose", "single_audience"):
            value = given.get(flag)
            if value is None:
                value = getattr(base, flag)
            elif getattr(base, flag) and not value:
                errors.append(
                    f"{where}.{flag}: the built-in rule requires it; it cannot be turned off"
                )
            flags[flag] = value
        audiences = given.get("audiences")
        out[name] = IdentityTypeRules(
            default_ttl_seconds=default,
            max_ttl_seconds=min(max_ttl, base.max_ttl_seconds),
            audiences=tuple(audiences) if audiences is not None else base.audiences,
            **flags,
        )
    return out


def _agent_issuer(
    identity_id: str, keys: Mapping[str, Any], broker: BrokerOptions
) -> TrustedIssuer:
    """The synthetic issuer for an identity's own keys: iss = sub = identity id, aud = our
    token endpoint, at most 5 minutes between iat and exp, every jti used once."""
    jwks = keys.get("jwks")
    return TrustedIssuer(
        id=AGENT_ISSUER_PREFIX + identity_id,
        issuer=identity_id,
        audience=broker.issuer.rstrip("/") + "/token",
        jwks_uri=keys.get("jwks_uri"),
        algorithms=tuple(keys["algorithms"]),
        replay="single-use",
        max_token_lifetime_seconds=300,
        profile=AGENT_PROFILE,
        jwks_json=json.dumps(jwks, sort_keys=True) if jwks is not None else None,
        identity_id=identity_id,
        options=IssuerOptions(allow_private_network=keys["allow_private_network"]),
    )


def _read_secret_hash(path_text: str, base: Path, where: str, errors: list[str]) -> bytes:
    path = Path(path_text)
    if not path.is_absolute():
        path = base / path
    try:
        secret = path.read_text().strip()
    except OSError as err:
        errors.append(f"{where}.secret_file: cannot read {path}: {err.strerror}")
        return b""
    if len(secret) < 16:
        errors.append(f"{where}.secret_file: the secret must be at least 16 characters")
    return hashlib.sha256(secret.encode()).digest()


def parse_config(raw: Any, base_dir: Path = Path(".")) -> Config:
    """Validate a parsed YAML document and build the Config, or raise ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError("configuration: the top level must be a mapping")
    try:
        data = ConfigSchema().load(raw)
    except ValidationError as err:
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(_flatten(err.messages))
        ) from err

    errors: list[str] = []
    warnings: list[str] = []
    broker: BrokerOptions = data["broker"]
    issuers: dict[str, TrustedIssuer] = {}
    for i, issuer in enumerate(data["issuers"]):
        if issuer.id in issuers:
            errors.append(f"issuers.{i}.id: duplicate issuer id {issuer.id!r}")
        if issuer.id.startswith(AGENT_ISSUER_PREFIX):
            errors.append(f"issuers.{i}.id: ids starting with {AGENT_ISSUER_PREFIX!r} are reserved")
        if issuer.issuer and any(other.issuer == issuer.issuer for other in issuers.values()):
            errors.append(f"issuers.{i}.issuer: issuer URL listed twice")
        if (
            issuer.profile == "spiffe"
            and not issuer.issuer
            and any(
                o.profile == "spiffe" and not o.issuer and o.trust_domain == issuer.trust_domain
                for o in issuers.values()
            )
        ):
            errors.append(f"issuers.{i}.trust_domain: trust domain listed twice")
        if issuer.jwks_file:
            path = Path(issuer.jwks_file)
            if not path.is_absolute():
                path = base_dir / path
            issuer = dataclasses.replace(issuer, jwks_file=str(path))
            if not path.is_file():
                warnings.append(f"issuers.{i}.jwks_file: {path} does not exist (yet)")
        for name in ("issuer", "jwks_uri"):
            if (getattr(issuer, name) or "").startswith("http:"):
                warnings.append(f"issuers.{i}.{name}: {PLAIN_HTTP_WARNING}")
        if issuer.replay == "reuse-within-lifetime" and issuer.profile in (
            "github-actions",
            "gitlab-ci",
        ):
            warnings.append(
                f"issuers.{i}.replay: {issuer.profile} tokens carry a jti and are requested per "
                "job; reuse-within-lifetime lets a leaked token be exchanged again"
            )
        issuers[issuer.id] = issuer

    type_rules = _type_rules(data["identity_types"], errors)
    identities: list[Identity] = []
    agent_issuers: dict[str, TrustedIssuer] = {}
    seen_ids: set[str] = set()
    for i, item in enumerate(data["identities"]):
        where = f"identities.{i}"
        kind = item["type"]
        if item["id"] in seen_ids:
            errors.append(f"{where}.id: duplicate identity id {item['id']!r}")
        seen_ids.add(item["id"])
        rules = []
        for j, match in enumerate(item["match"]):
            issuer = issuers.get(match["issuer"])
            if issuer is None:
                errors.append(f"{where}.match.{j}.issuer: no issuer with id {match['issuer']!r}")
            else:
                _check_rule(issuer, kind, match["claims"], f"{where}.match.{j}", errors, warnings)
            rules.append(
                MatchRule(
                    id=f"{item['id']}#{j}",
                    issuer_id=match["issuer"],
                    claims=tuple(sorted(match["claims"].items())),
                )
            )
        keys = item["keys"]
        agent_keys: AgentKeys | None = None
        if keys is not None:
            if kind == "human":
                errors.append(
                    f"{where}.keys: a human identity signs in through a human issuer, not own keys"
                )
            agent_issuer = _agent_issuer(item["id"], keys, broker)
            agent_issuers[item["id"]] = agent_issuer
            agent_keys = AgentKeys(
                jwks_json=agent_issuer.jwks_json,
                jwks_uri=agent_issuer.jwks_uri,
                algorithms=agent_issuer.algorithms,
            )
            rules.append(
                MatchRule(
                    id=f"{item['id']}#keys",
                    issuer_id=agent_issuer.id,
                    claims=(("sub", item["id"]),),
                )
            )
            if keys.get("jwks") is not None:
                _check_inline_jwks(agent_issuer, f"{where}.keys.jwks", errors)
            if (keys.get("jwks_uri") or "").startswith("http:"):
                warnings.append(f"{where}.keys.jwks_uri: {PLAIN_HTTP_WARNING}")
        allow = item["allow"]
        rules_for_type = type_rules[kind]
        if rules_for_type.audiences is not None:
            outside = [a for a in allow["audiences"] if a not in rules_for_type.audiences]
            if outside:
                errors.append(
                    f"{where}.allow.audiences: {kind} identities are confined to "
                    f"identity_types.{kind}.audiences; not listed there: {', '.join(outside)}"
                )
        if allow["max_ttl_seconds"] > rules_for_type.max_ttl_seconds:
            warnings.append(
                f"{where}.allow.max_ttl_seconds: capped at {rules_for_type.max_ttl_seconds} "
                f"for {kind} identities"
            )
        identities.append(
            Identity(
                id=item["id"],
                type=kind,
                owner=item["owner"],
                purpose=item["purpose"],
                expires=item["expires"],
                rules=tuple(rules),
                allow=Allowance(
                    audiences=tuple(allow["audiences"]),
                    scopes=tuple(allow["scopes"]),
                    default_scopes=tuple(allow["default_scopes"]),
                    max_ttl_seconds=allow["max_ttl_seconds"],
                ),
                keys=agent_keys,
            )
        )

    # Two identities that could match one token make the mapping ambiguous: refuse the file.
    for a, b in combinations(identities, 2):
        for ra in a.rules:
            for rb in b.rules:
                if _rules_overlap(ra, rb):
                    errors.append(
                        f"identities: {a.id!r} ({ra.id}) and {b.id!r} ({rb.id}) could match "
                        "the same token; add a claim that tells them apart"
                    )

    clients: dict[str, Client] = {}
    for i, item in enumerate(data["clients"]):
        where = f"clients.{i}"
        if item["client_id"] in clients:
            errors.append(f"{where}.client_id: duplicate client id {item['client_id']!r}")
        if item["secret_sha256"]:
            digest = bytes.fromhex(item["secret_sha256"])
        else:
            digest = _read_secret_hash(item["secret_file"], base_dir, where, errors)
        clients[item["client_id"]] = Client(client_id=item["client_id"], secret_sha256=digest)

    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return Config(
        broker=broker,
        issuers=issuers,
        identities=tuple(identities),
        clients=clients,
        identity_types=type_rules,
        agent_issuers=agent_issuers,
        warnings=tuple(warnings),
    )


def _check_rule(
    issuer: TrustedIssuer,
    kind: str,
    claims: Mapping[str, str],
    where: str,
    errors: list[str],
    warnings: list[str],
) -> None:
    """A rule's claims against its issuer's profile, and the human/workload separation."""
    if kind == "human" and not issuer.human:
        errors.append(
            f"{where}.issuer: a human identity can only be matched by an issuer marked "
            f"'human: true'; {issuer.id!r} issues workload tokens"
        )
    if kind != "human" and issuer.human:
        errors.append(
            f"{where}.issuer: {issuer.id!r} is a human issuer: "
            "its tokens match human identities only"
        )
    rule_errors, rule_warnings = rule_problems(PROFILE_TABLE[issuer.profile], claims)
    errors.extend(f"{where}.{e}" for e in rule_errors)
    warnings.extend(f"{where}.{w}" for w in rule_warnings)
    if issuer.profile == "spiffe" and "spiffe_id" in claims:
        prefix = f"spiffe://{issuer.trust_domain}/"
        if not claims["spiffe_id"].startswith(prefix):
            errors.append(
                f"{where}.claims.spiffe_id: must be a SPIFFE ID in trust domain "
                f"{issuer.trust_domain!r} (start with {prefix})"
            )


def _check_inline_jwks(issuer: TrustedIssuer, where: str, errors: list[str]) -> None:
    assert issuer.jwks_json is not None
    if not parse_jwks(json.loads(issuer.jwks_json), issuer):
        errors.append(
            f"{where}: no usable public signing key (allowed algorithms: "
            f"{', '.join(issuer.algorithms)}; RSA keys need at least 2048 bits)"
        )


_VAR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, variables: Mapping[str, str]) -> str:
    """Replace ${NAME} and ${NAME:-default}; an unset NAME without a default is an error."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if variables.get(name):
            return variables[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _VAR.sub(sub, text)
    if missing:
        raise ConfigError(
            "configuration refers to unset variables: " + ", ".join(sorted(set(missing)))
        )
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys: a repeated key silently replacing a rule is a trap."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: keys must be plain scalars")
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: Path, variables: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read configuration {path}: {err.strerror}") from err
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except ValueError as err:  # e.g. an impossible date such as 2027-13-01
        raise ConfigError(f"{path}: bad value: {err}") from err
    # Variables are expanded in string values after parsing, so comments are left alone and a
    # variable's value can never change the document's structure.
    raw = _expand_tree(raw, variables or {})
    return parse_config(raw, base_dir=path.resolve().parent)


def _expand_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return expand_vars(node, variables)
    if isinstance(node, list):
        return [_expand_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _expand_tree(value, variables) for key, value in node.items()}
    return node
