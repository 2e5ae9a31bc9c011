"""Request parsing: the OAuth form rules every endpoint shares, and marshmallow schemas.

RFC 6749 §3.2: parameters are sent in the body as application/x-www-form-urlencoded, at
most once each (RFC 8693 lets `audience`, `resource` and nothing else repeat); unknown
parameters are ignored. Any problem is an InvalidRequest naming the parameter."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from flask import Request
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from broker.domain.models import (
    SAFE_ID,
    SCOPE_TOKEN,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_JWT,
)
from broker.errors import InvalidRequest, InvalidScope
from broker.http.form_loader import CompiledForm, compile_form

# marshmallow runs error strings through str.format: no braces in them.
SAFE_ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ : @ + - starting with a letter or digit"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PARAM_CHARS = 16384
SENSITIVE = ("subject_token", "actor_token", "token", "assertion", "client_secret")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _shown(name: str) -> str:
    """A parameter name as an error may show it: RFC 6749 §5.2 limits error_description to
    printable ASCII without '"' or '\\', and a caller's name must not reach it raw."""
    return name if _PLAIN_NAME.fullmatch(name) else "a parameter"


def read_form(request: Request, *, repeatable: Iterable[str] = ()) -> dict[str, Any]:
    """The body's parameters as str (or list[str] for repeatable ones)."""
    args = request.args  # one lookup through the request proxy, not one per name
    if any(name in args for name in SENSITIVE):
        # Tokens in URLs end up in access logs and proxies.
        raise InvalidRequest(
            "send credentials in the request body, not the URL", reason="token_in_url"
        )
    mimetype = request.mimetype
    if mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest(
            "the body must be application/x-www-form-urlencoded", reason="bad_content_type"
        )
    multi = request.form
    allowed_repeats = set(repeatable)
    out: dict[str, Any] = {}
    for name in multi:
        values = multi.getlist(name)
        for value in values:
            if len(value) > MAX_PARAM_CHARS:
                raise InvalidRequest(
                    f"{_shown(name)}: the value is too long", reason="param_too_long"
                )
            if name not in (
                "subject_token",
                "actor_token",
                "token",
                "assertion",
            ) and _CONTROL.search(value):
                raise InvalidRequest(
                    f"{_shown(name)}: control characters are not allowed", reason="bad_characters"
                )
        if name in allowed_repeats:
            out[name] = values
        elif len(values) > 1:
            raise InvalidRequest(
                f"{_shown(name)}: the parameter is repeated", reason="repeated_param"
            )
        else:
            out[name] = values[0]
    return out


_COMPILED = "_errand_compiled_form"


def load(schema: Schema, data: dict[str, Any]) -> dict[str, Any]:
    """The schema's result for the known parameters, or InvalidRequest naming the first bad
    one. Accepted forms take the compiled fast path (http/form_loader.py); anything it does
    not accept is decided, and its error worded, by marshmallow itself."""
    compiled: CompiledForm | None
    if _COMPILED in schema.__dict__:
        compiled = schema.__dict__[_COMPILED]
    else:
        compiled = schema.__dict__[_COMPILED] = compile_form(schema)
    if compiled is not None:
        fast = compiled.load(data)
        if fast is not None:
            return fast
    known = {k: v for k, v in data.items() if k in schema.fields}
    try:
        result: dict[str, Any] = schema.load(known)
    except ValidationError as err:
        # Schema.load reports per field: {name: [message, ...]} (nested: a dict).
        messages = err.messages if isinstance(err.messages, dict) else {}
        name = next(iter(messages), "request")
        detail = messages.get(name)
        if isinstance(detail, list) and detail and isinstance(detail[0], str):
            text = detail[0]
        else:
            text = "invalid value"
        raise InvalidRequest(f"{name}: {text}", reason="bad_parameter") from err
    return result


def parse_scope(value: str | None) -> tuple[str, ...] | None:
    """RFC 6749 §3.3: scope-token *( SP scope-token )."""
    if value is None:
        return None
    tokens = value.split(" ")
    if not value or any(not SCOPE_TOKEN.fullmatch(t) for t in tokens) or len(tokens) > 64:
        raise InvalidScope("scope: malformed scope value", reason="malformed_scope")
    return tuple(tokens)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


def _no_blank(value: str) -> None:
    if not value:
        raise ValidationError("must not be empty")


APPROVAL_ID = r"apr_[A-Za-z0-9_-]{16,43}\Z"


class TokenExchangeForm(_Strict):
    grant_type = fields.String(required=True)
    subject_token = fields.String(required=True, validate=_no_blank)
    # access_token: one of Errand's own, as the subject of a delegation (docs/agents.md).
    subject_token_type = fields.String(
        required=True,
        validate=validate.OneOf(
            [TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN],
            error="unsupported token type",
        ),
    )
    requested_token_type = fields.String(
        load_default=None,
        validate=validate.OneOf(
            [TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT], error="unsupported token type"
        ),
    )
    audience = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)), load_default=list
    )
    resource = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)), load_default=list
    )
    scope = fields.String(load_default=None)
    actor_token = fields.String(load_default=None, validate=_no_blank)
    actor_token_type = fields.String(
        load_default=None,
        validate=validate.OneOf(
            [TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN], error="unsupported token type"
        ),
    )
    # Errand's extension (RFC 8693 §4.4): the one identity that may act for the issued token.
    may_act = fields.String(
        load_default=None,
        validate=validate.Regexp(SAFE_ID.pattern + r"\Z", error=SAFE_ID_RULE),
    )
    task_id = fields.String(
        load_default=None,
        validate=validate.Regexp(SAFE_ID.pattern + r"\Z", error=SAFE_ID_RULE),
    )
    purpose = fields.String(load_default=None, validate=validate.Length(min=1, max=256))
    # Polling a human approval (docs/policy.md): the id an authorization_pending answer gave.
    approval_id = fields.String(load_default=None, validate=validate.Regexp(APPROVAL_ID))
    requested_lifetime = fields.String(
        load_default=None,
        validate=validate.Regexp(r"[1-9][0-9]{0,5}\Z", error="must be a whole number of seconds"),
    )
    # The task lifecycle (docs/agents.md): read when the exchange opens the task.
    task_deadline = fields.String(
        load_default=None,
        validate=validate.Regexp(r"[1-9][0-9]{0,11}\Z", error="must be a unix time in seconds"),
    )
    task_label = fields.List(fields.String(validate=validate.Length(max=200)), load_default=list)

    @validates("resource")
    def _absolute(self, value: list[str], **_: Any) -> None:
        # RFC 8707 §2: an absolute URI without a fragment.
        for uri in value:
            if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri) or "#" in uri:
                raise ValidationError("must be an absolute URI without a fragment")


class JwtBearerForm(_Strict):
    """RFC 7523 §2.1 jwt-bearer grant, plus the same Errand extension parameters as token
    exchange (audience, resource, task_id, purpose, requested_lifetime)."""

    grant_type = fields.String(required=True)
    assertion = fields.String(required=True, validate=_no_blank)
    scope = fields.String(load_default=None)
    audience = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)), load_default=list
    )
    resource = fields.List(
        fields.String(validate=validate.Length(min=1, max=512)), load_default=list
    )
    task_id = fields.String(
        load_default=None,
        validate=validate.Regexp(SAFE_ID.pattern + r"\Z", error=SAFE_ID_RULE),
    )
    purpose = fields.String(load_default=None, validate=validate.Length(min=1, max=256))
    # Polling a human approval (docs/policy.md): the id an authorization_pending answer gave.
    approval_id = fields.String(load_default=None, validate=validate.Regexp(APPROVAL_ID))
    requested_lifetime = fields.String(
        load_default=None,
        validate=validate.Regexp(r"[1-9][0-9]{0,5}\Z", error="must be a whole number of seconds"),
    )
    # The task lifecycle (docs/agents.md): read when the exchange opens the task.
    task_deadline = fields.String(
        load_default=None,
        validate=validate.Regexp(r"[1-9][0-9]{0,11}\Z", error="must be a unix time in seconds"),
    )
    task_label = fields.List(fields.String(validate=validate.Length(max=200)), load_default=list)
    client_id = fields.String(load_default=None, validate=validate.Length(min=1, max=256))

    @validates("resource")
    def _absolute(self, value: list[str], **_: Any) -> None:
        for uri in value:
            if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri) or "#" in uri:
                raise ValidationError("must be an absolute URI without a fragment")


class TokenForm(_Strict):
    token = fields.String(required=True, validate=validate.Length(min=1, max=8192))
    token_type_hint = fields.String(load_default=None, validate=validate.Length(max=64))
