"""A fast loader for the flat form schemas of the hot endpoints (`POST /token`,
`POST /introspect`), built once from the marshmallow schema itself.

marshmallow's `Schema.load` costs tens of microseconds per call in its own machinery (error
store, hook lookup, per-field dispatch), which was ~5 % of an exchange's CPU. The schemas of
the two grants are flat: `String` and `List(String)` fields with plain validators. For such a
schema the loader below calls the same field validators and `@validates` hooks directly and
builds the same result. It decides acceptance only: when anything fails, the request goes
through `Schema.load` after all, so a refusal carries marshmallow's own message, exactly as
before. A schema with anything else (another field type, `data_key`/`attribute`, pre/post-load
or schema-level hooks) is never compiled and always goes through marshmallow, so a field added
to a schema later is either handled the same way or not handled here at all.

tests/property/test_form_loader.py checks that both agree on acceptance, values and errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing
from marshmallow.decorators import VALIDATES

_NO_DEFAULT: Any = missing


@dataclass(frozen=True)
class _Field:
    name: str
    is_list: bool
    required: bool
    load_default: Any  # missing: left out of the result when absent
    validators: tuple[Callable[[Any], Any], ...]  # on the value (a list: on the whole list)
    inner_validators: tuple[Callable[[Any], Any], ...]  # List(String): on each item
    hooks: tuple[Callable[..., Any], ...]  # the schema's @validates methods for this field


class CompiledForm:
    """`load(data)`: the schema's result, or None when marshmallow must decide (a refusal)."""

    def __init__(self, fields_: tuple[_Field, ...]) -> None:
        self._fields = fields_

    def load(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        try:
            for f in self._fields:
                value = data.get(f.name, _NO_DEFAULT)
                if value is _NO_DEFAULT:
                    if f.required:
                        return None
                    default = f.load_default
                    if default is _NO_DEFAULT:
                        continue
                    value = default() if callable(default) else default
                    # marshmallow's @validates hooks also see a defaulted value
                    out[f.name] = value
                    for hook in f.hooks:
                        hook(value, data_key=f.name)
                    continue
                if f.is_list:
                    if not isinstance(value, list):
                        return None
                    for item in value:
                        if not isinstance(item, str):
                            return None
                        for check in f.inner_validators:
                            if check(item) is False:
                                return None
                    value = list(value)
                elif not isinstance(value, str):
                    return None
                for check in f.validators:
                    if check(value) is False:
                        return None
                for hook in f.hooks:
                    hook(value, data_key=f.name)
                out[f.name] = value
        except ValidationError:
            return None
        return out


def _plain(field: fields.Field[Any]) -> bool:
    return (
        field.data_key is None
        and field.attribute is None
        and not getattr(field, "pre_load", None)
        and not getattr(field, "post_load", None)
    )


def _validators(field: fields.Field[Any]) -> tuple[Callable[[Any], Any], ...] | None:
    """The field's validators, to be called as they are: marshmallow's own Validator objects
    raise, plain functions raise or return False (a failure to marshmallow as well)."""
    out = []
    for check in field.validators:
        if not callable(check):
            return None
        out.append(check)
    return tuple(out)


def compile_form(schema: Schema) -> CompiledForm | None:
    """A CompiledForm for `schema`, or None if it has anything this loader does not cover."""
    hooks = schema._hooks  # marshmallow's registry of decorated methods (private)
    if any(hooks[name] for name in hooks if name != VALIDATES):
        return None  # pre_load / post_load / validates_schema: leave it to marshmallow
    by_field: dict[str, list[Callable[..., Any]]] = {}
    for attr_name, _, kwargs in hooks[VALIDATES]:
        for field_name in kwargs["field_names"]:
            by_field.setdefault(field_name, []).append(getattr(schema, attr_name))
    if set(by_field) - set(schema.load_fields):
        return None
    compiled = []
    for name, field in schema.load_fields.items():
        if not _plain(field) or type(field) not in (fields.String, fields.List):
            return None
        validators = _validators(field)
        if validators is None:
            return None
        inner: tuple[Callable[[Any], Any], ...] = ()
        if isinstance(field, fields.List):
            if type(field.inner) is not fields.String or not _plain(field.inner):
                return None
            if field.inner.required or field.inner.load_default is not _NO_DEFAULT:
                return None
            inner_validators = _validators(field.inner)
            if inner_validators is None:
                return None
            inner = inner_validators
        compiled.append(
            _Field(
                name=name,
                is_list=isinstance(field, fields.List),
                required=bool(field.required),
                load_default=field.load_default,
                validators=validators,
                inner_validators=inner,
                hooks=tuple(by_field.get(name, ())),
            )
        )
    return CompiledForm(tuple(compiled))
