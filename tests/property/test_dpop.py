"""The DPoP proof checker raises nothing but DpopError, whatever the proof; a proof that
passes names exactly the request it was checked against."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from errand_jose import DpopError, check_proof, normalise_htu
from tests.support.dpop import make_key, raw_proof

NOW = 1_800_000_000.0
URL = "https://errand.example/token"
KEY = make_key("ES256")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _check(proof: str, **kw: Any) -> Any:
    return check_proof(proof, method="POST", url=URL, now=NOW, max_age_seconds=60, **kw)


@settings(max_examples=60)
@given(st.text(max_size=300))
def test_any_text_is_refused_cleanly(text: str) -> None:
    try:
        _check(text)
    except DpopError:
        return
    raise AssertionError("an arbitrary string passed as a proof")


@settings(max_examples=40)
@given(
    claim=st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]),
    value=json_values,
    header_member=st.sampled_from(["typ", "alg", "jwk", "kid", "crit"]),
    header_value=json_values,
    tamper_header=st.booleans(),
)
def test_mutated_claims_and_headers_raise_only_dpop_error(
    claim: str, value: Any, header_member: str, header_value: Any, tamper_header: bool
) -> None:
    header = {header_member: header_value} if tamper_header else None
    try:
        proof = raw_proof(KEY, htu=URL, iat=NOW, header=header, **{claim: value})
    except Exception:  # PyJWT refuses to sign some headers; nothing to check then
        return
    try:
        checked = _check(proof, access_token="tok", nonce_ok=lambda n: n is None or n == "ok")
    except DpopError as err:
        assert err.error in ("invalid_dpop_proof", "use_dpop_nonce")
        return
    # Accepted: then it really names this request (the claims we were asked to check).
    assert checked.claims["htm"] == "POST"
    assert normalise_htu(checked.claims["htu"]) == normalise_htu(URL)


@settings(max_examples=25)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.from_regex(r"/[a-z0-9/]{0,20}", fullmatch=True),
    other_path=st.from_regex(r"/[a-z0-9/]{0,20}", fullmatch=True),
)
def test_accepted_only_for_its_own_method_and_url(method: str, path: str, other_path: str) -> None:
    url = "https://rs.example" + path
    proof = raw_proof(KEY, htm=method, htu=url, iat=NOW)
    assert check_proof(proof, method=method, url=url, now=NOW, max_age_seconds=60)
    other = "https://rs.example" + other_path
    if normalise_htu(other) != normalise_htu(url):
        try:
            check_proof(proof, method=method, url=other, now=NOW, max_age_seconds=60)
        except DpopError:
            return
        raise AssertionError("a proof passed for another URL")
