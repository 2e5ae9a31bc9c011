"""The `audiences:` and `policy:` sections: declared audiences (sensitivity, scope classes,
contract version) and the runtime policy (a Cedar policy directory, approvers).

The policy directory is compiled here, with the rest of the configuration, so a start-up,
a reload and `errand config check` all refuse a bad policy the same way: a reload that fails
keeps the running configuration and its policies (broker/reload.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from broker.config.values import _flag, _id, _positive, _scope, _Strict
from broker.domain.approval_webhook import webhook_url_problem
from broker.domain.models import (
    SCOPE_CLASSES,
    ApprovalWebhook,
    AudienceSpec,
    Identity,
    PolicyOptions,
    RuntimePolicy,
)
from broker.policy.cedar_engine import PolicyError, configured_scopes, load_policy_dir


class AudienceSchema(_Strict):
    id = fields.String(required=True, validate=validate.Length(min=1, max=512))
    sensitivity = fields.String(
        load_default="normal", validate=validate.OneOf(("low", "normal", "high", "critical"))
    )
    scopes = fields.Dict(
        keys=fields.String(validate=validate.OneOf(SCOPE_CLASSES)),
        values=fields.List(fields.String(validate=_scope)),
        load_default=dict,
    )
    contract_version = fields.String(load_default="", validate=validate.Length(max=128))
    contract_widening = _flag(False)

    @validates_schema
    def _one_class_each(self, data: dict[str, Any], **_: Any) -> None:
        seen: set[str] = set()
        for scopes in data.get("scopes", {}).values():
            for scope in scopes:
                if scope in seen:
                    raise ValidationError(f"{scope!r} is listed in two classes", "scopes")
                seen.add(scope)
        if data.get("contract_widening") and not data.get("contract_version"):
            raise ValidationError("contract_widening needs a contract_version", "contract_version")


class ApprovalWebhookSchema(_Strict):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    secret_file = fields.String(required=True, validate=validate.Length(min=1))
    timeout_seconds = fields.Float(load_default=5.0, validate=validate.Range(min=0.1, max=30))


class PolicySchema(_Strict):
    dir = fields.String(load_default=None, validate=validate.Length(min=1))
    approval_webhook = fields.Nested(ApprovalWebhookSchema, load_default=None)
    approvers = fields.List(fields.String(validate=_id), load_default=list)
    approval_ttl_seconds = fields.Integer(
        load_default=900, validate=validate.Range(min=30, max=86400), strict=True
    )
    approval_poll_interval_seconds = fields.Integer(load_default=5, validate=_positive, strict=True)


def audiences_from(items: list[dict[str, Any]], errors: list[str]) -> dict[str, AudienceSpec]:
    out: dict[str, AudienceSpec] = {}
    for i, item in enumerate(items):
        if item["id"] in out:
            errors.append(f"audiences.{i}.id: duplicate audience {item['id']!r}")
        out[item["id"]] = AudienceSpec(
            id=item["id"],
            sensitivity=item["sensitivity"],
            scope_classes={s: cls for cls, scopes in item["scopes"].items() for s in scopes},
            contract_version=item["contract_version"],
            contract_widening=item["contract_widening"],
        )
    return out


MIN_WEBHOOK_SECRET_BYTES = 32


def webhook_from(
    raw: Mapping[str, Any] | None, base_dir: Path, errors: list[str]
) -> ApprovalWebhook | None:
    """The approval webhook, its secret read from its file here, once (never in the YAML)."""
    if not raw:
        return None
    problem = webhook_url_problem(raw["url"])
    if problem:
        errors.append(f"policy.approval_webhook.url: {problem}")
    path = Path(raw["secret_file"])
    path = path if path.is_absolute() else base_dir / path
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        errors.append(f"policy.approval_webhook.secret_file: cannot read {path}: {err.strerror}")
        return None
    if len(secret) < MIN_WEBHOOK_SECRET_BYTES:
        errors.append(
            "policy.approval_webhook.secret_file: the secret must be at least "
            f"{MIN_WEBHOOK_SECRET_BYTES} bytes"
        )
    return ApprovalWebhook(
        url=raw["url"], secret=secret, timeout_seconds=float(raw["timeout_seconds"])
    )


def policy_from(
    raw: Mapping[str, Any] | None,
    base_dir: Path,
    audiences: Mapping[str, AudienceSpec],
    identities: tuple[Identity, ...],
    errors: list[str],
) -> tuple[PolicyOptions, RuntimePolicy | None]:
    """The options, and the compiled policy when a directory is configured."""
    raw = raw or {}
    directory: Path | None = None
    if raw.get("dir"):
        directory = Path(raw["dir"])
        directory = directory if directory.is_absolute() else base_dir / directory
    options = PolicyOptions(
        dir=directory,
        approvers=tuple(raw.get("approvers", ())),
        approval_ttl_seconds=raw.get("approval_ttl_seconds", 900),
        approval_poll_interval_seconds=raw.get("approval_poll_interval_seconds", 5),
        approval_webhook=webhook_from(raw.get("approval_webhook"), base_dir, errors),
    )
    by_id = {i.id: i for i in identities}
    for approver in options.approvers:
        found = by_id.get(approver)
        if found is None:
            errors.append(f"policy.approvers: {approver!r} is not an identity of the inventory")
        elif found.type != "human":
            errors.append(f"policy.approvers: {approver!r} is a {found.type}, not a human")
    if directory is None:
        return options, None
    try:
        compiled = load_policy_dir(
            directory, scopes=configured_scopes(audiences, identities), audiences=audiences
        )
    except (PolicyError, OSError) as err:
        errors.append(f"policy.dir: {err}")
        return options, None
    return options, compiled
