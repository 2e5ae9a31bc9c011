"""The compiled form loader (http/form_loader.py) agrees with marshmallow's Schema.load on
the hot endpoints' schemas: the same forms accepted, the same values, the same errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, pre_load

from broker.domain.models import (
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_JWT,
)
from broker.errors import InvalidRequest
from broker.http.form_loader import compile_form
from broker.http.forms import load
from broker.http.introspect import TOKEN_FORM
from broker.http.token import EXCHANGE_FORM, JWT_BEARER_FORM

SETTINGS = settings(max_examples=60, deadline=None)
SCHEMAS = {"exchange": EXCHANGE_FORM, "jwt-bearer": JWT_BEARER_FORM, "introspect": TOKEN_FORM}


def marshmallow_load(schema: Schema, data: dict[str, Any]) -> dict[str, Any]:
    """forms.load as it was before the compiled loader: marshmallow alone."""
    known = {k: v for k, v in data.items() if k in schema.fields}
    try:
        result: dict[str, Any] = schema.load(known)
    except ValidationError as err:
        messages = err.messages if isinstance(err.messages, dict) else {}
        name = next(iter(messages), "request")
        detail = messages.get(name)
        text = (
            detail[0]
            if isinstance(detail, list) and detail and isinstance(detail[0], str)
            else "invalid value"
        )
        raise InvalidRequest(f"{name}: {text}", reason="bad_parameter") from err
    return result


# Values near every validator's edges, plus arbitrary text.
EDGE_VALUES = [
    "",
    "a",
    "x" * 256,
    "x" * 257,
    "x" * 512,
    "x" * 513,
    "x" * 8192,
    "x" * 8193,
    "https://deploy.acme.example",
    "https://a.example/p#frag",
    "no-scheme",
    "urn:x",
    "1",
    "0",
    "600",
    "999999",
    "1000000",
    "12345678901",
    "-1",
    "acme-app-deploy",
    "task.1:2@x+y",
    "-starts-badly",
    "apr_" + "A" * 20,
    TOKEN_TYPE_JWT,
    TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_ACCESS_TOKEN,
    "urn:ietf:params:oauth:grant-type:token-exchange",
]
strings = st.one_of(st.sampled_from(EDGE_VALUES), st.text(max_size=24))


# A valid value per required field: most drawn forms get past them to the other checks.
VALID = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token": "a.b.c",
    "subject_token_type": TOKEN_TYPE_JWT,
    "assertion": "a.b.c",
    "token": "a.b.c",
}


def forms(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the schema's fields (and an unknown one), each with a value of the right
    shape most of the time: a list for List fields, a str otherwise; required fields mostly
    valid, so that the optional fields' checks are reached."""
    required, optional = {}, {}
    for name, field in schema.load_fields.items():
        right = st.lists(strings, max_size=3) if isinstance(field, fields.List) else strings
        wrong = strings if isinstance(field, fields.List) else st.lists(strings, max_size=2)
        anything = st.one_of(right, right, right, wrong)
        if field.required and name in VALID:
            required[name] = st.one_of(*[st.just(VALID[name])] * 6, anything)
        else:
            optional[name] = anything
    optional["unknown_param"] = strings
    many = st.fixed_dictionaries(required, optional=optional)
    # One optional field at a time, the rest valid: each field's own checks decide.
    valid = {name: VALID[name] for name in required}
    one = st.sampled_from(sorted(optional)).flatmap(
        lambda name: optional[name].map(lambda value: {**valid, name: value})
    )
    return st.one_of(many, one)


def outcome(fn: Any, schema: Schema, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", fn(schema, data)
    except InvalidRequest as err:
        return "refused", (err.error, err.description, err.reason)


@pytest.mark.parametrize("which", sorted(SCHEMAS))
@SETTINGS
@given(data=st.data())
def test_compiled_loader_agrees_with_marshmallow(which: str, data: st.DataObject) -> None:
    schema = SCHEMAS[which]
    form = data.draw(forms(schema))
    assert outcome(load, schema, form) == outcome(marshmallow_load, schema, form)


@pytest.mark.parametrize("which", sorted(SCHEMAS))
def test_the_hot_schemas_are_compiled(which: str) -> None:
    assert compile_form(SCHEMAS[which]) is not None


def test_anything_else_is_left_to_marshmallow() -> None:
    class WithNumber(Schema):
        n = fields.Integer()

    class WithHook(Schema):
        s = fields.String()

        @pre_load
        def _strip(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
            return data

    class WithDataKey(Schema):
        s = fields.String(data_key="other")

    for schema in (WithNumber(), WithHook(), WithDataKey()):
        assert compile_form(schema) is None
    # and load() still works for them, through marshmallow
    assert load(WithNumber(), {"n": "3"}) == {"n": 3}
