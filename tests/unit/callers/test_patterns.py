"""Rule values: exact strings and anchored globs; conservative overlap."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.policy.patterns import PatternError, compile_value, values_overlap


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("refs/heads/release/*", "refs/heads/release/1.2", True),
        ("refs/heads/release/*", "refs/heads/release/", False),  # '*' is one or more
        ("refs/heads/release/*", "refs/heads/release/a/b", False),  # '*' never matches '/'
        ("refs/heads/release/*", "xrefs/heads/release/1", False),  # anchored at the start
        ("refs/heads/release/*", "refs/heads/release/1\n", False),  # and at the end
        ("release-*.yml", "release-prod.yml", True),
        ("release-*.yml", "release-prod.yml.bak", False),
        ("acme/*", "acme/app", True),
        ("acme/*", "acme-evil/app", False),
        ("a.c", "abc", False),  # regex metacharacters are literal
        ("main", "main", True),
        ("main", "main2", False),
    ],
)
def test_matching(pattern: str, value: str, expected: bool) -> None:
    assert compile_value(pattern).matches(value) is expected


def test_exact_values_do_not_compile_a_regex() -> None:
    assert compile_value("refs/heads/main").is_exact
    assert not compile_value("refs/heads/*").is_exact


@pytest.mark.parametrize("bad", ["refs/**", "*/*/*", "a*b*c*d"])
def test_refused_patterns(bad: str) -> None:
    with pytest.raises(PatternError):
        compile_value(bad)


def test_none_and_oversized_values_never_match() -> None:
    p = compile_value("*")
    assert not p.matches(None)
    assert not p.matches("a" * 2000)


def test_matching_cost_is_bounded() -> None:
    p = compile_value("a*a*b")
    start = time.perf_counter()
    assert not p.matches("a" * 1024)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("main", "main", True),
        ("main", "dev", False),
        ("refs/heads/*", "refs/heads/main", True),
        ("refs/heads/*", "refs/tags/v1", False),
        ("refs/heads/*", "refs/heads/release/*", False),  # different '/' count
        ("refs/heads/release-*", "refs/heads/*", True),
        ("refs/heads/a*", "refs/heads/b*", False),  # literal prefixes differ
        ("refs/heads/*.x", "refs/heads/*.y", False),  # literal suffixes differ
        ("refs/*/main", "refs/heads/*", True),
    ],
)
def test_overlap(a: str, b: str, overlap: bool) -> None:
    assert values_overlap(a, b) is overlap
    assert values_overlap(b, a) is overlap


_seg = st.text(alphabet="ab.", min_size=1, max_size=3)
_value = st.lists(_seg, min_size=1, max_size=3).map("/".join)
_pat_seg = st.one_of(_seg, st.just("*"), _seg.map(lambda s: s + "*"), _seg.map(lambda s: "*" + s))
_pattern = (
    st.lists(_pat_seg, min_size=1, max_size=3).map("/".join).filter(lambda p: p.count("*") <= 2)
)


@pytest.mark.slow  # hundreds of generated examples: over a second
@settings(max_examples=300)
@given(pattern=_pattern, value=st.text(alphabet="ab./\n", max_size=12))
def test_a_pattern_never_matches_beyond_its_anchors(pattern: str, value: str) -> None:
    """The compiled pattern agrees with a reference fnmatch-like definition, fully anchored."""
    ref = "".join("[^/\x00-\x1f\x7f]+" if c == "*" else re.escape(c) for c in pattern)
    assert compile_value(pattern).matches(value) == (
        re.fullmatch(ref, value, re.DOTALL) is not None
    )
    if compile_value(pattern).matches(value):
        assert value.count("/") == pattern.count("/")


@pytest.mark.slow  # hundreds of generated examples: over a second
@settings(max_examples=300)
@given(a=_pattern, b=_pattern, value=_value)
def test_overlap_is_conservative(a: str, b: str, value: str) -> None:
    """Never reports 'disjoint' for two values that one claim value matches."""
    if compile_value(a).matches(value) and compile_value(b).matches(value):
        assert values_overlap(a, b)
