"""One token, one encoding: base64url with non-zero trailing bits is refused (RFC 4648 §3.5).

The last character of a segment whose length is 2 or 3 modulo 4 carries 4 or 2 bits that
encode nothing. A lenient decoder maps 16 (or 4) spellings of that character to the same
bytes, so a valid token could be re-spelled into another valid token: a different string,
hash and audit fingerprint for the same signed content. The one JOSE reader (errand_jose,
shared by the broker and the resource-server library) must refuse every such spelling, in
every segment."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.dev.issuer import github_claims
from broker.domain.models import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from errand_jose import JoseError, read_compact_jws, verify_signature
from tests.support.builders import AUDIENCE, DEPLOY_AUD, UNIT_ISSUER
from tests.support.jws import es256_sign

SETTINGS = settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
UNUSED_BITS = {2: 4, 3: 2}  # segment length mod 4 -> bits of the last character that are padding


def flip_trailing_bits(segment: str, mask: int) -> str | None:
    """The same bytes spelled another way, or None when the segment has no spare bits."""
    spare = UNUSED_BITS.get(len(segment) % 4)
    if spare is None:
        return None
    mask &= (1 << spare) - 1
    if mask == 0:
        return None
    last = B64_ALPHABET[B64_ALPHABET.index(segment[-1]) ^ mask]
    return segment[:-1] + last


def signed_token(prop_env: dict[str, Any], header_pad: str, claim_pad: str) -> str:
    key = prop_env["key"]
    claims = github_claims(issuer=UNIT_ISSUER, audience=AUDIENCE, now=prop_env["clock"].now())
    claims["x_pad"] = claim_pad  # varies the payload's length, so every residue mod 4 occurs
    header = {"alg": "ES256", "typ": "JWT", "kid": key.kid, "x_pad": header_pad}
    return es256_sign(key, header, claims)


def respelled(token: str, which: int, mask: int) -> str:
    parts = token.split(".")
    flipped = flip_trailing_bits(parts[which], mask)
    assume(flipped is not None)
    assert flipped is not None
    parts[which] = flipped
    return ".".join(parts)


pads = st.text(alphabet="abcdefgh", max_size=5)
segments = st.sampled_from([0, 1, 2])  # header, payload, signature
masks = st.integers(min_value=1, max_value=15)


@pytest.mark.regression
@SETTINGS
@given(header_pad=pads, claim_pad=pads, which=segments, mask=masks)
def test_review_non_canonical_base64url_in_any_segment_is_refused_by_the_reader(
    prop_env: dict[str, Any], header_pad: str, claim_pad: str, which: int, mask: int
) -> None:
    token = signed_token(prop_env, header_pad, claim_pad)
    # The token as signed reads fine, and its signature verifies over the exact bytes.
    parsed = read_compact_jws(token, max_bytes=8192)
    assert verify_signature(parsed, prop_env["key"].public_key, "ES256")

    other = respelled(token, which, mask)
    assert other != token
    with pytest.raises(JoseError, match="base64url"):
        read_compact_jws(other, max_bytes=8192)


@pytest.mark.regression
@SETTINGS
@given(claim_pad=pads, which=segments, mask=masks)
def test_review_respelled_subject_token_is_refused_at_the_token_endpoint(
    prop_env: dict[str, Any], claim_pad: str, which: int, mask: int
) -> None:
    token = respelled(signed_token(prop_env, "", claim_pad), which, mask)
    form = {
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": TOKEN_TYPE_JWT,
        "audience": DEPLOY_AUD,
        "scope": "deploy:read",
    }
    resp = prop_env["client"].post("/token", data=form)
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["error"] == "invalid_request"
    assert "malformed" in body["error_description"]
    assert "access_token" not in body
