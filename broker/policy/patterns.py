"""Rule values: exact strings, or simple anchored glob patterns.

A value without `*` matches one claim value exactly. A value with `*` is a pattern:

- `*` stands for one or more characters other than `/` and control characters, so
  `refs/heads/release/*` matches `refs/heads/release/1.2` but neither `refs/heads/release/`
  nor `refs/heads/release/a/b` nor `refs/heads/release/x\n`, and a pattern always matches
  values with exactly as many `/` as it has itself;
- the whole value must match (the regex is anchored with \\A and \\Z); every other character
  is literal (regex metacharacters are escaped); there is no escape for a literal `*`;
- at most two `*` per value and never `**`, which bounds the matching cost (no pattern can
  backtrack more than quadratically over a claim value of at most MAX_VALUE_CHARS).

Patterns are compiled once, at configuration load; a bad pattern stops the load.
Overlap detection is conservative: two values overlap unless they are provably disjoint."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

MAX_STARS = 2
STAR = r"[^/\x00-\x1f\x7f]+"  # what one `*` matches
MAX_VALUE_CHARS = 1024  # longer claim values never match a rule (rule values are <= 512)


class PatternError(ValueError):
    """A rule value is not a valid pattern; the message says why."""


@dataclass(frozen=True)
class ValuePattern:
    text: str
    regex: re.Pattern[str] | None = field(default=None, compare=False)  # None: exact value

    @property
    def is_exact(self) -> bool:
        return self.regex is None

    def matches(self, value: str | None) -> bool:
        if value is None or len(value) > MAX_VALUE_CHARS:
            return False
        if self.regex is None:
            return value == self.text
        return self.regex.fullmatch(value) is not None

    @property
    def anchored_first_segment(self) -> bool:
        """True when the part before the first `/` is literal (e.g. the owner in `acme/*`)."""
        return self.regex is None or "*" not in self.text.split("/", 1)[0]


@lru_cache(maxsize=4096)
def compile_value(text: str) -> ValuePattern:
    if "*" not in text:
        return ValuePattern(text)
    if "**" in text:
        raise PatternError("'**' is not supported: '*' matches within one '/'-separated segment")
    if text.count("*") > MAX_STARS:
        raise PatternError(f"at most {MAX_STARS} '*' per value")
    body = STAR.join(re.escape(part) for part in text.split("*"))
    return ValuePattern(text, re.compile(r"\A" + body + r"\Z", re.DOTALL))


def _segment_disjoint(a: str, b: str) -> bool:
    """True only when no string can match both segment patterns (neither contains `/`)."""
    if "*" not in a and "*" not in b:
        return a != b
    if "*" not in a:
        return not compile_value(b).matches(a)
    if "*" not in b:
        return not compile_value(a).matches(b)
    pa, pb = a.split("*", 1)[0], b.split("*", 1)[0]
    if not (pa.startswith(pb) or pb.startswith(pa)):
        return True
    sa, sb = a.rsplit("*", 1)[1], b.rsplit("*", 1)[1]
    return not (sa.endswith(sb) or sb.endswith(sa))


def values_overlap(a: str, b: str) -> bool:
    """Could one claim value match both rule values? Errs towards True (never a false False)."""
    if "*" not in a and "*" not in b:
        return a == b
    if "*" not in a:
        return compile_value(b).matches(a)
    if "*" not in b:
        return compile_value(a).matches(b)
    sa, sb = a.split("/"), b.split("/")
    if len(sa) != len(sb):
        return False  # `*` never matches `/`: a value has exactly the pattern's `/` count
    return not any(_segment_disjoint(x, y) for x, y in zip(sa, sb, strict=True))
