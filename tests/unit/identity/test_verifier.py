"""broker/identity/verifier.py, directly and through POST /token.

Each refusal is checked twice: the verifier raises the right VerificationError, and the HTTP
endpoint answers 400 invalid_request (RFC 8693 §2.2.2) without writing any grant state."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.dev.issuer import github_claims
from broker.identity.errors import (
    BadSignature,
    ClaimInvalid,
    MalformedToken,
    UnknownIssuer,
    UnknownKey,
    VerificationError,
)
from broker.identity.verifier import token_sha256
from tests.support.builders import AUDIENCE, UNIT_ISSUER, StaticFetcher, fake_services, make_config
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error
from tests.support.jws import es256_sign, hs256_sign, new_es256_key, public_pem, rs256_sign, segment
from tests.support.redis import grant_state_keys

NOW = 1_800_000_000


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    c = github_claims(issuer=UNIT_ISSUER, audience=AUDIENCE, now=now)
    c.update(overrides)
    return c


@pytest.fixture
def verify(svc, clock) -> Callable[[str], Any]:
    return lambda token: svc.verifier.verify(token, now=clock.now())


@pytest.fixture
def refused_over_http(client, svc) -> Callable[..., dict[str, Any]]:
    def check(token: str, **extra: Any) -> dict[str, Any]:
        before = grant_state_keys(svc)
        resp = client.post("/token", data=deploy_form(token, **extra))
        body = assert_oauth_error(resp, 400, "invalid_request")
        assert body["error_description"].startswith("subject_token:")
        assert grant_state_keys(svc) == before  # no token, no state
        return body

    return check


def header(key: Any, **extra: Any) -> dict[str, Any]:
    return {"alg": "ES256", "typ": "JWT", "kid": key.kid, **extra}


# -- the happy path -----------------------------------------------------------------------------


def test_valid_token_verifies(verify, issuer_key) -> None:
    token = es256_sign(issuer_key, header(issuer_key), claims())
    subject = verify(token)
    assert subject.issuer.id == "gha"
    assert subject.claims["repository_id"] == "100200300"
    assert subject.exp == NOW + 300
    assert subject.token_sha256 == token_sha256(token)
    assert token not in repr(subject)


@pytest.mark.parametrize("typ", [None, "JWT", "jwt"])
def test_typ_absent_or_jwt_is_accepted(verify, issuer_key, typ) -> None:
    hdr = {"alg": "ES256", "kid": issuer_key.kid}
    if typ is not None:
        hdr["typ"] = typ
    assert verify(es256_sign(issuer_key, hdr, claims())).issuer.id == "gha"


def test_no_kid_uses_the_issuers_only_key(verify, issuer_key) -> None:
    token = es256_sign(issuer_key, {"alg": "ES256", "typ": "JWT"}, claims())
    assert verify(token).issuer.id == "gha"


# -- header allow-list --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(verify, refused_over_http, issuer_key, fetcher, alg) -> None:
    unsigned = es256_sign(issuer_key, {"alg": alg, "typ": "JWT"}, claims()).rsplit(".", 1)[0] + "."
    with pytest.raises(MalformedToken):
        verify(unsigned)
    refused_over_http(unsigned)
    # With a junk signature it is the algorithm check that refuses it.
    signed_junk = unsigned + "AAAA"
    with pytest.raises(MalformedToken, match="algorithm is not allowed"):
        verify(signed_junk)
    refused_over_http(signed_junk)
    assert fetcher.calls == 0


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_issuers_public_key_is_refused(
    verify, refused_over_http, issuer_key, fetcher, alg
) -> None:
    # The classic key-confusion attack: HMAC keyed with the issuer's public key bytes.
    token = hs256_sign(
        public_pem(issuer_key), {"alg": alg, "typ": "JWT", "kid": issuer_key.kid}, claims()
    )
    with pytest.raises(MalformedToken, match="algorithm is not allowed"):
        verify(token)
    refused_over_http(token)
    assert fetcher.calls == 0


def test_alg_outside_the_issuers_list_is_refused(
    verify, refused_over_http, issuer_key, fetcher
) -> None:
    # RS256 is asymmetric, so globally allowed, but the issuer is configured for ES256 only.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = rs256_sign(rsa_key, {"alg": "RS256", "typ": "JWT", "kid": issuer_key.kid}, claims())
    with pytest.raises(MalformedToken, match="not allowed for its issuer"):
        verify(token)
    refused_over_http(token)
    assert fetcher.calls == 0


def test_alg_that_does_not_match_the_key_is_refused(config, key_dir, clock, issuer_key) -> None:
    # The issuer allows ES256 and ES384; the key in its JWKS is an ES256 key.
    cfg = make_config(
        UNIT_ISSUER, mutate=lambda d: d["issuers"][0].update(algorithms=["ES256", "ES384"])
    )
    svc = fake_services(
        cfg, key_dir, clock=clock, fetcher=StaticFetcher({"keys": [issuer_key.public_jwk()]})
    )
    token = es256_sign(issuer_key, {"alg": "ES384", "typ": "JWT", "kid": issuer_key.kid}, claims())
    with pytest.raises(BadSignature, match="does not match its key"):
        svc.verifier.verify(token, now=clock.now())


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "JWS", "dpop+jwt", 7])
def test_typed_tokens_other_than_jwt_are_refused(
    verify, refused_over_http, issuer_key, typ
) -> None:
    token = es256_sign(issuer_key, header(issuer_key, typ=typ), claims())
    with pytest.raises(MalformedToken, match="type is not accepted"):
        verify(token)
    refused_over_http(token)


@pytest.mark.parametrize("crit", [["exp"], [], ["b64"]])
def test_crit_header_is_refused(verify, refused_over_http, issuer_key, crit) -> None:
    token = es256_sign(issuer_key, header(issuer_key, crit=crit, b64=True), claims())
    with pytest.raises(MalformedToken, match="critical"):
        verify(token)
    refused_over_http(token)


@pytest.mark.parametrize("kid", [123, "", "k" * 257, ["a"], {"k": 1}])
def test_malformed_kid_is_refused(verify, issuer_key, kid) -> None:
    token = es256_sign(issuer_key, {"alg": "ES256", "typ": "JWT", "kid": kid}, claims())
    with pytest.raises(MalformedToken, match="key id"):
        verify(token)


@pytest.fixture
def no_egress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries HTTP."""
    import requests

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected outbound request: {args!r}")

    monkeypatch.setattr(requests, "get", boom)
    monkeypatch.setattr(requests.Session, "request", boom)


def attacker_headers(attacker: Any, kid: str) -> dict[str, Any]:
    return {
        "alg": "ES256",
        "typ": "JWT",
        "kid": kid,
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": attacker.public_jwk(),
    }


def test_jku_x5u_jwk_are_ignored(
    verify, refused_over_http, exchange, issuer_key, fetcher, no_egress
) -> None:
    attacker = new_es256_key()
    # Signed by the issuer's key: accepted, and the embedded key material is simply ignored.
    good = es256_sign(issuer_key, attacker_headers(attacker, issuer_key.kid), claims())
    assert verify(good).issuer.id == "gha"
    assert fetcher.calls == 1
    assert exchange(good).status_code == 200

    # Signed by the attacker's key, which the header carries and points at: refused.
    for kid in (attacker.kid, issuer_key.kid):
        forged = es256_sign(
            attacker, attacker_headers(attacker, kid), claims(jti=secrets.token_hex(8))
        )
        with pytest.raises((UnknownKey, BadSignature)):
            verify(forged)
        refused_over_http(forged)
    # The only fetch was the configured issuer's JWKS, once.
    assert fetcher.calls == 1


def test_unknown_issuer_is_refused_without_a_fetch(
    verify, refused_over_http, issuer_key, fetcher, no_egress
) -> None:
    for iss in ("https://attacker.example", UNIT_ISSUER + "/", UNIT_ISSUER.upper()):
        token = es256_sign(issuer_key, header(issuer_key), claims(iss=iss))
        with pytest.raises(UnknownIssuer):
            verify(token)
        refused_over_http(token)
    assert fetcher.calls == 0


@pytest.mark.parametrize("iss", [None, 42, ["x"]])
def test_missing_or_non_string_iss_is_refused(verify, issuer_key, fetcher, iss) -> None:
    c = claims()
    if iss is None:
        del c["iss"]
    else:
        c["iss"] = iss
    with pytest.raises(MalformedToken, match="no issuer"):
        verify(es256_sign(issuer_key, header(issuer_key), c))
    assert fetcher.calls == 0


def test_signature_by_another_key_with_the_issuers_kid_is_refused(
    verify, refused_over_http, issuer_key
) -> None:
    other = new_es256_key()
    token = es256_sign(other, header(issuer_key), claims())
    with pytest.raises(BadSignature):
        verify(token)
    refused_over_http(token)


def test_tampered_payload_is_refused(verify, issuer_key) -> None:
    token = es256_sign(issuer_key, header(issuer_key), claims())
    h, _p, s = token.split(".")

    tampered = f"{h}.{segment(claims(ref='refs/heads/release'))}.{s}"
    with pytest.raises(BadSignature):
        verify(tampered)


# -- registered claims ---------------------------------------------------------------------------


def test_wrong_audience_is_refused(verify, refused_over_http, issuer_key) -> None:
    for aud in ("someone-else", ["someone-else", "other"], AUDIENCE.upper(), AUDIENCE + " "):
        token = es256_sign(
            issuer_key, header(issuer_key), claims(aud=aud, jti=secrets.token_hex(8))
        )
        with pytest.raises(ClaimInvalid) as info:
            verify(token)
        assert info.value.reason == "wrong_audience"
        refused_over_http(token)


def test_audience_list_of_ours_alone_is_accepted_but_not_with_others(
    verify, exchange, issuer_key, refused_over_http
) -> None:
    token = es256_sign(issuer_key, header(issuer_key), claims(aud=[AUDIENCE]))
    assert verify(token).issuer.id == "gha"
    assert exchange(token).status_code == 200
    # strict_aud unless the issuer sets allow_multiple_audiences (test_review_claims.py)
    token = es256_sign(issuer_key, header(issuer_key), claims(aud=["other", AUDIENCE]))
    with pytest.raises(ClaimInvalid) as info:
        verify(token)
    assert info.value.reason == "multiple_audiences"
    refused_over_http(token)


@pytest.mark.parametrize("name", ["iss", "aud", "exp", "iat"])
def test_missing_required_claim_is_refused(verify, refused_over_http, issuer_key, name) -> None:
    c = claims()
    del c[name]
    token = es256_sign(issuer_key, header(issuer_key), c)
    with pytest.raises(VerificationError):
        verify(token)
    refused_over_http(token)


def test_expired_beyond_skew_is_refused_and_within_skew_accepted(
    verify, refused_over_http, issuer_key, clock
) -> None:
    now = clock.now()
    expired = es256_sign(issuer_key, header(issuer_key), claims(iat=now - 600, exp=now - 61))
    with pytest.raises(ClaimInvalid) as info:
        verify(expired)
    assert info.value.reason == "expired"
    body = refused_over_http(expired)
    assert "expired" in body["error_description"]

    boundary = es256_sign(issuer_key, header(issuer_key), claims(iat=now - 600, exp=now - 60))
    with pytest.raises(ClaimInvalid):
        verify(boundary)

    within = es256_sign(issuer_key, header(issuer_key), claims(iat=now - 600, exp=now - 59))
    assert verify(within).exp == now - 59


def test_iat_in_the_future_beyond_skew_is_refused(
    verify, refused_over_http, issuer_key, clock
) -> None:
    now = clock.now()
    token = es256_sign(issuer_key, header(issuer_key), claims(iat=now + 61, exp=now + 600))
    with pytest.raises(ClaimInvalid) as info:
        verify(token)
    assert info.value.reason == "issued_in_future"
    refused_over_http(token)
    ok = es256_sign(issuer_key, header(issuer_key), claims(iat=now + 59, nbf=now, exp=now + 600))
    assert verify(ok).issuer.id == "gha"


def test_nbf_in_the_future_beyond_skew_is_refused(
    verify, refused_over_http, issuer_key, clock
) -> None:
    now = clock.now()
    token = es256_sign(issuer_key, header(issuer_key), claims(nbf=now + 61))
    with pytest.raises(ClaimInvalid) as info:
        verify(token)
    assert info.value.reason == "not_yet_valid"
    refused_over_http(token)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exp", str(NOW + 300)),
        ("exp", True),
        ("exp", "soon"),
        ("exp", [NOW + 300]),
        ("exp", {"n": NOW}),
        ("exp", 10**12),
        ("exp", -1),
        ("exp", 1e400),
        ("iat", str(NOW)),
        ("iat", False),
        ("nbf", str(NOW)),
        ("nbf", True),
    ],
)
def test_numeric_dates_must_be_numbers(verify, refused_over_http, issuer_key, name, value) -> None:
    token = es256_sign(issuer_key, header(issuer_key), claims(**{name: value}))
    with pytest.raises(VerificationError):
        verify(token)
    refused_over_http(token)


def test_lifetime_longer_than_the_issuer_allows_is_refused(
    key_dir, clock, fetcher, issuer_key
) -> None:
    cfg = make_config(
        UNIT_ISSUER, mutate=lambda d: d["issuers"][0].update(max_token_lifetime_seconds=600)
    )
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    now = clock.now()
    too_long = es256_sign(issuer_key, header(issuer_key), claims(iat=now, exp=now + 601))
    with pytest.raises(ClaimInvalid) as info:
        svc.verifier.verify(too_long, now=now)
    assert info.value.reason == "lifetime_too_long"
    ok = es256_sign(issuer_key, header(issuer_key), claims(iat=now, exp=now + 600))
    assert svc.verifier.verify(ok, now=now).exp == now + 600


def test_default_max_lifetime_is_a_day(verify, refused_over_http, issuer_key, clock) -> None:
    now = clock.now()
    token = es256_sign(issuer_key, header(issuer_key), claims(iat=now, exp=now + 86401))
    with pytest.raises(ClaimInvalid):
        verify(token)
    refused_over_http(token)


def test_missing_jti_is_refused_for_a_single_use_issuer(
    verify, refused_over_http, issuer_key
) -> None:
    c = claims()
    del c["jti"]
    token = es256_sign(issuer_key, header(issuer_key), c)
    with pytest.raises(ClaimInvalid) as info:
        verify(token)
    assert info.value.reason == "missing_claim"
    refused_over_http(token)


@pytest.mark.parametrize("jti", ["", "j" * 257, 12345, ["a"]])
def test_malformed_jti_is_refused(verify, issuer_key, jti) -> None:
    with pytest.raises(VerificationError):
        verify(es256_sign(issuer_key, header(issuer_key), claims(jti=jti)))


def test_missing_jti_is_fine_for_a_reuse_within_lifetime_issuer(
    key_dir, clock, fetcher, issuer_key
) -> None:
    cfg = make_config(
        UNIT_ISSUER, mutate=lambda d: d["issuers"][0].update(replay="reuse-within-lifetime")
    )
    svc = fake_services(cfg, key_dir, clock=clock, fetcher=fetcher)
    c = claims()
    del c["jti"]
    subject = svc.verifier.verify(es256_sign(issuer_key, header(issuer_key), c), now=clock.now())
    assert subject.jti is None


def test_duplicate_claims_are_refused_even_when_signed(verify, issuer_key) -> None:
    # {"ref": main, ..., "ref": release}: a lenient parser might take either.
    body = claims()
    text = '{"ref":"refs/heads/release",' + __import__("json").dumps(body)[1:]
    token = es256_sign(issuer_key, header(issuer_key), text)
    with pytest.raises(MalformedToken, match="duplicate"):
        verify(token)


def test_oversized_token_is_refused_before_any_fetch(
    verify, refused_over_http, issuer_key, fetcher
) -> None:
    token = es256_sign(issuer_key, header(issuer_key), claims(pad="x" * 9000))
    with pytest.raises(MalformedToken, match="too large"):
        verify(token)
    refused_over_http(token)
    assert fetcher.calls == 0
