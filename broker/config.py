"""The broker's YAML configuration: issuers, the identity inventory and introspection clients.

Validated with marshmallow at start-up. Every error names the key path and what is wrong,
and the broker refuses to start on a bad file (see docs/configuration.md)."""

from __future__ import annotations

import hashlib
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
    IDENTITY_TYPES,
    SAFE_ID,
    SCOPE_TOKEN,
    Allowance,
    BrokerOptions,
    Client,
    Config,
    Identity,
    MatchRule,
    TrustedIssuer,
)
from broker.errors import BrokerError
from broker.tokens.algorithms import ASYMMETRIC_ALGORITHMS


class ConfigError(BrokerError):
    """The configuration file is unusable; the message lists every problem with its key path."""


_id = validate.Regexp(SAFE_ID.pattern + r"\Z", error="must match [A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_scope = validate.Regexp(SCOPE_TOKEN.pattern + r"\Z", error="is not a valid RFC 6749 scope token")
_positive = validate.Range(min=1)


def _url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or parts.query:
        raise ValidationError("must be an absolute http(s) URL without query or fragment")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


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
    issuer = fields.String(required=True, validate=_url)
    audience = fields.String(required=True, validate=validate.Length(min=1, max=512))
    jwks_uri = fields.String(load_default=None, validate=_url)
    algorithms = fields.List(
        fields.String(validate=validate.OneOf(ASYMMETRIC_ALGORITHMS)),
        load_default=lambda: ["RS256", "ES256"],
        validate=validate.Length(min=1),
    )
    replay = fields.String(
        load_default="single-use",
        validate=validate.OneOf(["single-use", "reuse-within-lifetime"]),
    )
    refresh_cooldown_seconds = fields.Integer(
        load_default=60, validate=validate.Range(min=1, max=3600), strict=True
    )
    jwks_max_age_seconds = fields.Integer(load_default=3600, validate=_positive, strict=True)
    jwks_stale_seconds = fields.Integer(load_default=86400, validate=_positive, strict=True)
    max_token_lifetime_seconds = fields.Integer(load_default=86400, validate=_positive, strict=True)
    fetch_timeout_seconds = fields.Float(
        load_default=3.0, validate=validate.Range(min=0.1, max=10)
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> TrustedIssuer:
        data["algorithms"] = tuple(data["algorithms"])
        return TrustedIssuer(**data)


class ClaimValue(fields.Field):
    """A claim's expected value: a string, or an integer written as a number in YAML."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("must be a string or an integer")
        text = str(value)
        if not text or len(text) > 512:
            raise ValidationError("must be 1 to 512 characters")
        return text


class DateField(fields.Field):
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


class IdentitySchema(_Strict):
    id = fields.String(required=True, validate=_id)
    type = fields.String(required=True, validate=validate.OneOf(IDENTITY_TYPES))
    owner = fields.String(required=True, validate=_id)
    purpose = fields.String(required=True, validate=validate.Length(min=1, max=512))
    expires = DateField(load_default=None)
    match = fields.List(
        fields.Nested(MatchSchema), required=True, validate=validate.Length(min=1)
    )
    allow = fields.Nested(AllowSchema, required=True)


class ClientSchema(_Strict):
    client_id = fields.String(required=True, validate=_id)
    secret_sha256 = fields.String(
        load_default=None, validate=validate.Regexp(r"[0-9a-f]{64}\Z", error="must be 64 hex digits")
    )
    secret_file = fields.String(load_default=None)

    @validates_schema
    def _one_secret(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("secret_sha256") is None) == (data.get("secret_file") is None):
            raise ValidationError("give exactly one of secret_sha256 or secret_file", "client_id")


class ConfigSchema(_Strict):
    broker = fields.Nested(BrokerSchema, required=True)
    issuers = fields.List(fields.Nested(IssuerSchema), required=True)
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
    """Exact-value rules can match one token unless some claim they share differs."""
    if a.issuer_id != b.issuer_id:
        return False
    da, db = dict(a.claims), dict(b.claims)
    return all(da[k] == db[k] for k in da.keys() & db.keys())


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
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_flatten(err.messages))) from err

    errors: list[str] = []
    broker: BrokerOptions = data["broker"]
    issuers: dict[str, TrustedIssuer] = {}
    for i, issuer in enumerate(data["issuers"]):
        if issuer.id in issuers:
            errors.append(f"issuers.{i}.id: duplicate issuer id {issuer.id!r}")
        if any(other.issuer == issuer.issuer for other in issuers.values()):
            errors.append(f"issuers.{i}.issuer: issuer URL listed twice")
        issuers[issuer.id] = issuer

    identities: list[Identity] = []
    seen_ids: set[str] = set()
    for i, item in enumerate(data["identities"]):
        where = f"identities.{i}"
        if item["id"] in seen_ids:
            errors.append(f"{where}.id: duplicate identity id {item['id']!r}")
        seen_ids.add(item["id"])
        rules = []
        for j, match in enumerate(item["match"]):
            if match["issuer"] not in issuers:
                errors.append(f"{where}.match.{j}.issuer: no issuer with id {match['issuer']!r}")
            rules.append(
                MatchRule(
                    id=f"{item['id']}#{j}",
                    issuer_id=match["issuer"],
                    claims=tuple(sorted(match["claims"].items())),
                )
            )
        allow = item["allow"]
        identities.append(
            Identity(
                id=item["id"],
                type=item["type"],
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
    return Config(broker=broker, issuers=issuers, identities=tuple(identities), clients=clients)


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
        raise ConfigError("configuration refers to unset variables: " + ", ".join(sorted(set(missing))))
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys: a repeated key silently replacing a rule is a trap."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
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
    text = expand_vars(text, variables or {})
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return parse_config(raw, base_dir=path.resolve().parent)
