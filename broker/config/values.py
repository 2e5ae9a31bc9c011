"""What one configuration value may be: the validators and field types the schemas share.

marshmallow runs error strings through str.format: no braces in them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from broker.domain.models import SAFE_ID, SCOPE_TOKEN
from broker.identity.egress import is_loopback_host

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


_TRUST_DOMAIN = validate.Regexp(
    r"[a-z0-9._-]{1,255}\Z", error="must be a SPIFFE trust domain name (lowercase, no scheme)"
)


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
