"""errand_jose/compact.py: size and shape before any decoding; strict JSON objects only."""

from __future__ import annotations

import pytest

from errand_jose import compact as jose
from errand_jose.compact import MAX_HEADER_BYTES, JoseError, read_compact_jws, strict_json_object
from tests.support.jws import b64url, segment

HEADER = {"alg": "ES256", "typ": "JWT"}
PAYLOAD = {"iss": "https://issuer.example", "sub": "x"}
SIG = b64url(b"\x01" * 64)


def jws(header: object = HEADER, payload: object = PAYLOAD, sig: str = SIG) -> str:
    return f"{segment(header)}.{segment(payload)}.{sig}"


def test_well_formed_token_is_read() -> None:
    parsed = read_compact_jws(jws(), max_bytes=8192)
    assert parsed.header == HEADER
    assert parsed.payload == PAYLOAD


def test_size_limit_applies_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(jose, "b64url_decode", lambda s: calls.append(s) or b"{}")
    monkeypatch.setattr(jose, "strict_json_object", lambda raw: calls.append("json") or {})
    token = jws(payload={"pad": "x" * 10_000})
    with pytest.raises(JoseError, match="too large"):
        read_compact_jws(token, max_bytes=8192)
    assert calls == []
    # The same oversized input that is not even a JWS is also refused for size first.
    with pytest.raises(JoseError, match="too large"):
        read_compact_jws("!" * 9000, max_bytes=8192)


def test_token_exactly_at_the_limit_is_accepted() -> None:
    token = jws()
    assert read_compact_jws(token, max_bytes=len(token)).payload == PAYLOAD
    with pytest.raises(JoseError, match="too large"):
        read_compact_jws(token, max_bytes=len(token) - 1)


def test_oversized_header_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(jose, "b64url_decode", lambda s: calls.append(s) or b"{}")
    header = {"alg": "ES256", "pad": "h" * (MAX_HEADER_BYTES + 10)}
    with pytest.raises(JoseError, match="header too large"):
        read_compact_jws(jws(header=header), max_bytes=65536)
    assert calls == []


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(f"{segment(HEADER)}.{segment(PAYLOAD)}", id="two-segments"),
        pytest.param(f"{segment(HEADER)}.{segment(PAYLOAD)}.{SIG}.{SIG}", id="four-segments"),
        pytest.param(
            f"{segment({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.{SIG}.{SIG}.{SIG}.{SIG}", id="jwe"
        ),
        pytest.param(f"{segment(HEADER)}.{segment(PAYLOAD)}.", id="empty-signature"),
        pytest.param(f".{segment(PAYLOAD)}.{SIG}", id="empty-header"),
        pytest.param(f"{segment(HEADER)}..{SIG}", id="empty-payload-detached"),
        pytest.param(
            '{"payload":"eyJ9","signatures":[{"protected":"eyJ9","signature":"AA"}]}',
            id="json-general",
        ),
        pytest.param('{"payload":"eyJ9","protected":"eyJ9","signature":"AA"}', id="json-flat"),
        pytest.param(f"{segment(HEADER)}.{segment(PAYLOAD)}.{SIG}\n", id="trailing-newline"),
        pytest.param(f" {segment(HEADER)}.{segment(PAYLOAD)}.{SIG}", id="leading-space"),
        pytest.param(f"{segment(HEADER)}.{segment(PAYLOAD)}.{SIG}=", id="padding"),
        pytest.param(f"{segment(HEADER)}.{segment(PAYLOAD)}+/.{SIG}", id="standard-base64"),
    ],
)
def test_only_compact_three_segment_jws_is_accepted(token: str) -> None:
    with pytest.raises(JoseError, match="not a compact JWS"):
        read_compact_jws(token, max_bytes=8192)


@pytest.mark.parametrize("token", ["", None, 123, b"a.b.c"])
def test_empty_or_non_text_is_refused(token: object) -> None:
    with pytest.raises(JoseError):
        read_compact_jws(token, max_bytes=8192)  # type: ignore[arg-type]


def test_bad_base64_length_is_refused() -> None:
    # A base64url segment whose length is 1 mod 4 cannot encode whole bytes.
    with pytest.raises(JoseError, match="bad base64url"):
        read_compact_jws(f"{segment(HEADER)}.abcde.{SIG}", max_bytes=8192)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"alg":"ES256"}'.encode("utf-16"), "not UTF-8"),
        (b'{"alg":"ES256","alg":"none"}', "duplicate JSON member"),
        (b'{"a":{"b":1,"b":2}}', "duplicate JSON member"),
        (b'{"exp":NaN}', "non-standard JSON number"),
        (b'{"exp":Infinity}', "non-standard JSON number"),
        (b'{"exp":-Infinity}', "non-standard JSON number"),
        (b"[1,2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"123", "not a JSON object"),
        (b"{", "not JSON"),
        (b'{"a":1} trailing', "not JSON"),
    ],
)
def test_strict_json(raw: bytes, message: str) -> None:
    with pytest.raises(JoseError, match=message):
        strict_json_object(raw)
    # The same bytes as the header or the payload of a token are refused alike.
    with pytest.raises(JoseError, match=message):
        read_compact_jws(f"{b64url(raw)}.{segment(PAYLOAD)}.{SIG}", max_bytes=65536)
    with pytest.raises(JoseError, match=message):
        read_compact_jws(f"{segment(HEADER)}.{b64url(raw)}.{SIG}", max_bytes=65536)


def test_deep_nesting_is_refused_not_crashing() -> None:
    deep = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    with pytest.raises(JoseError, match="not JSON"):
        strict_json_object(deep)
    with pytest.raises(JoseError, match="not JSON"):
        read_compact_jws(f"{segment(HEADER)}.{b64url(deep)}.{SIG}", max_bytes=10**6)


def test_error_messages_do_not_echo_the_token() -> None:
    token = f"{segment(HEADER)}.{b64url(b'{' + b'secret-value' * 4)}.{SIG}"
    with pytest.raises(JoseError) as info:
        read_compact_jws(token, max_bytes=8192)
    assert "secret-value" not in str(info.value)
    assert token not in str(info.value)
