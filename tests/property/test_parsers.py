"""Parsers raise only their own error type, whatever the input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.models import SCOPE_TOKEN
from broker.errors import InvalidScope
from broker.http.forms import parse_scope
from errand_jose import CompactJws, JoseError, read_compact_jws
from tests.support.jws import b64url

SETTINGS = settings(max_examples=200)

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

segments = st.one_of(
    st.text(alphabet=B64_ALPHABET, max_size=40),
    st.binary(max_size=60).map(b64url),
    json_values.map(lambda v: b64url(json.dumps(v).encode())),
    st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(
        lambda v: b64url(json.dumps(v).encode())
    ),
    st.text(max_size=30).map(lambda t: b64url(t.encode("utf-8", "surrogatepass"))),
)

token_like = st.one_of(
    st.text(max_size=200),
    st.lists(segments, min_size=1, max_size=6).map(".".join),
    st.tuples(segments, segments, segments).map(".".join),
)


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(token=token_like, max_bytes=st.integers(min_value=0, max_value=10_000))
def test_read_compact_jws_raises_only_jose_error(token: str, max_bytes: int) -> None:
    try:
        parsed = read_compact_jws(token, max_bytes=max_bytes)
    except JoseError:
        return
    assert isinstance(parsed, CompactJws)
    assert isinstance(parsed.header, dict) and isinstance(parsed.payload, dict)
    assert len(token) <= max_bytes
    assert token.count(".") == 2


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(
    value=st.one_of(
        st.none(),
        st.text(max_size=300),
        st.lists(st.from_regex(SCOPE_TOKEN, fullmatch=True), min_size=1, max_size=70).map(" ".join),
    )
)
def test_parse_scope_raises_only_invalid_scope(value: str | None) -> None:
    try:
        scopes = parse_scope(value)
    except InvalidScope as err:
        assert err.error == "invalid_scope"
        return
    if value is None:
        assert scopes is None
        return
    assert scopes is not None
    assert " ".join(scopes) == value  # nothing dropped, nothing added
    assert 1 <= len(scopes) <= 64
    assert all(SCOPE_TOKEN.fullmatch(s) for s in scopes)
