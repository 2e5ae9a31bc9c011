"""The shape every audit event is written in (`bounded_event`), wherever it is written: the
log line and stream entry of broker/audit.py, and the issued event the grant write appends
inside its script (domain/exchange.py). Plain Python, so the domain may use it.

Every event is shaped before it is written (`bounded_event`), because anyone who can reach
the token endpoint chooses some of its text:

- text nobody vouched for stays out: a denial with no matched identity drops `purpose`, and
  a `debug` that quotes the unverified token (its `iss`, trust domain, `kid`, `alg`, `typ`)
  becomes a SHA-256 prefix, a length and a short printable-ASCII form;
- the whole event fits `EVENT_BUDGET_BYTES`, measured as the stream stores it (JSON escapes
  one non-ASCII character to as much as 12 bytes). An event over it has each string cut to
  `FIELD_BUDGET_BYTES`, lists and objects to `MAX_ITEMS` entries, then strings outside the
  core fields cut shorter until it fits; if it still does not, only the core fields are
  kept.

Anything cut carries `CUT` at the end of the string and `"truncated": true` on the event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from broker.domain.audit_hmac import redact

EVENT_BUDGET_BYTES = 2048  # one event as the stream stores it (compact, ASCII-escaped JSON)
FIELD_BUDGET_BYTES = 256  # one string value, same measure
MAX_ITEMS = 16  # entries kept of any list or object inside an event
UNVERIFIED_TEXT_CHARS = 64  # printable ASCII kept of text quoted from an unverified token
CUT = "...[cut]"
# Denials whose `debug` quotes the unverified token (identity/verifier.py, identity/jwks.py).
UNVERIFIED_DEBUG_REASONS = frozenset({"unknown_issuer", "unknown_key", "malformed_token"})
# Kept even when nothing else fits: what decided, about what, for whom, from where.
CORE_FIELDS = (
    "ts",
    "event",
    "outcome",
    "error",
    "reason",
    "request_id",
    "client_address",
    "token_sha256",
    "token_hmac",
    "issuer",
    "identity",
    "task",
    "jti",
    "jti_hmac",
    "actor",
    "kind",
)
# Cut last: the core and our own short description of the decision.
KEPT_LONGEST = frozenset({*CORE_FIELDS, "description"})


def serialised(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _escaped(text: str) -> str:
    """`text` as the stream's JSON writes it (quoted, non-ASCII escaped): the C encoder."""
    return str(encode_basestring_ascii(text))


def _ascii_safe(text: str) -> str:
    """Printable ASCII without quote or backslash, so JSON writes it byte for byte."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def _cut(text: str, budget: int) -> str:
    """`text` if its JSON form fits `budget` bytes, else its longest prefix that does + CUT."""
    if len(_escaped(text)) - 2 <= budget:
        return text
    room, used = budget - len(CUT), 0
    for n, char in enumerate(text):
        used += len(_escaped(char)) - 2
        if used > room:
            return text[:n] + CUT
    return text


def _clip(value: Any, budget: int) -> Any:
    if isinstance(value, str):
        return _cut(value, budget)
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {str(k)[:64]: _clip(v, budget) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out[CUT] = len(items) - MAX_ITEMS
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        kept = [_clip(v, budget) for v in seq[:MAX_ITEMS]]
        return [*kept, f"{CUT} {len(seq) - MAX_ITEMS} more"] if len(seq) > MAX_ITEMS else kept
    return value


def _without_unverified_text(event: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(event)
    if out.get("outcome") != "denied" or out.get("identity"):
        return out
    # No identity matched: the caller is unauthenticated (anyone can mint a valid CI token),
    # so its free text is not ours to keep.
    out.pop("purpose", None)
    debug = out.get("debug")
    if isinstance(debug, str) and out.get("reason") in UNVERIFIED_DEBUG_REASONS:
        out["debug"] = _ascii_safe(debug[:UNVERIFIED_TEXT_CHARS]) + (
            CUT if len(debug) > UNVERIFIED_TEXT_CHARS else ""
        )
        out["debug_sha256"] = hashlib.sha256(debug.encode("utf-8", "replace")).hexdigest()[:16]
        out["debug_length"] = len(debug)
    return out


class ShapedEvent(dict[str, Any]):
    """An event as `bounded_event` returned it, with the JSON text its size was measured on:
    the log line and the stream entry write that text instead of encoding the event again
    (`event_text`). Changing the dict drops the text."""

    json_text: str | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        self.json_text = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.json_text = None
        super().__delitem__(key)

    def _dropped(self, result: Any) -> Any:
        self.json_text = None
        return result

    def pop(self, *args: Any) -> Any:
        return self._dropped(super().pop(*args))

    def popitem(self) -> tuple[str, Any]:
        return self._dropped(super().popitem())  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._dropped(super().clear())

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._dropped(super().update(*args, **kwargs))

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self._dropped(super().setdefault(key, default))

    def __ior__(self, other: Any) -> ShapedEvent:  # type: ignore[override,misc]
        self.json_text = None
        super().__ior__(other)
        return self


def event_text(event: Mapping[str, Any]) -> str:
    """The event as compact JSON: the text `bounded_event` measured, when it is still valid."""
    text = event.json_text if isinstance(event, ShapedEvent) else None
    return text if text is not None else serialised(event)


def bounded_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as it may be written: credentials and jtis as HMACs (audit_hmac.py), no
    unverified text, within EVENT_BUDGET_BYTES."""
    shaped = _without_unverified_text(redact(event))
    text = serialised(shaped)
    if len(text) <= EVENT_BUDGET_BYTES:
        out = ShapedEvent(shaped)  # the usual case: nothing to cut
        out.json_text = text
        return out
    for budget in (FIELD_BUDGET_BYTES, 128, 64, 32):
        # Every field is kept (MAX_ITEMS applies to values inside it); fields outside the
        # core are cut shorter before any core field is.
        clipped = {
            k: _clip(v, FIELD_BUDGET_BYTES if k in KEPT_LONGEST else budget)
            for k, v in shaped.items()
        }
        clipped["truncated"] = True
        if len(serialised(clipped)) <= EVENT_BUDGET_BYTES:
            return clipped
    for budget in (FIELD_BUDGET_BYTES, 128, 64):
        core = {k: _clip(shaped[k], budget) for k in CORE_FIELDS if k in shaped}
        core["truncated"] = True
        if len(serialised(core)) <= EVENT_BUDGET_BYTES:
            break
    return core
