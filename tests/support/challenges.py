"""A strict parser for one WWW-Authenticate challenge (RFC 9110 §11.6.1, RFC 6750 §3), so a
test reads a challenge back the way a careful client would instead of searching its text.

    challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param = token BWS "=" BWS ( token / quoted-string )

Stricter than the grammar where RFC 6750 is: a parameter appears once; `scope`, `error` and
`error_description` are quoted-strings; `scope` is scope-tokens joined by single spaces;
`error_description` holds only %x20-21 / %x23-5B / %x5D-7E. Anything else raises
ValueError, including a second challenge in the same header value."""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PARAM = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})")
_SEP = re.compile(r"[ \t]*,[ \t]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_MUST_QUOTE = ("scope", "error", "error_description", "resource_metadata", "realm")


def _unquote(value: str) -> tuple[str, bool]:
    if not value.startswith('"'):
        return value, False
    return re.sub(r"\\(.)", r"\1", value[1:-1]), True


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme in lowercase, {param name in lowercase: value}) of exactly one challenge."""
    match = re.match(rf"({_TOKEN})(?: +|$)", header)
    if match is None:
        raise ValueError("no auth-scheme")
    scheme, pos = match.group(1).lower(), match.end()
    params: dict[str, str] = {}
    while pos < len(header):
        param = _PARAM.match(header, pos)
        if param is None:
            raise ValueError(f"not an auth-param at {pos}: {header[pos : pos + 30]!r}")
        name = param.group(1).lower()
        value, quoted = _unquote(param.group(2))
        if name in params:
            raise ValueError(f"{name} appears twice")
        if name in _MUST_QUOTE and not quoted:
            raise ValueError(f"{name} must be a quoted-string")
        params[name] = value
        pos = param.end()
        if pos == len(header):
            break
        sep = _SEP.match(header, pos)
        if sep is None or sep.end() == len(header):
            raise ValueError(f"expected ', ' between auth-params at {pos}")
        pos = sep.end()
    if "scope" in params and not _SCOPE.fullmatch(params["scope"]):
        raise ValueError("scope is not space-separated scope-tokens")
    if "error_description" in params and not _DESCRIPTION.fullmatch(params["error_description"]):
        raise ValueError("error_description has characters RFC 6750 §3 excludes")
    return scheme, params
