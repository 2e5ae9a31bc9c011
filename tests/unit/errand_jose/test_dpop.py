"""errand_jose.check_proof (RFC 9449 §4.3) and RFC 7638 thumbprints."""

from __future__ import annotations

import jwt
import pytest

from broker.domain.models import DPOP_ALGORITHMS as BROKER_DPOP_ALGORITHMS
from errand_jose import (
    DPOP_ALGORITHMS,
    DpopError,
    access_token_hash,
    check_proof,
    jwk_thumbprint,
    normalise_htu,
)
from tests.support.dpop import DpopKey, make_key, public_jwk, raw_proof

NOW = 1_800_000_000.0
URL = "https://errand.example/token"


def check(proof: str, **kw: object) -> object:
    args: dict[str, object] = {"method": "POST", "url": URL, "now": NOW, "max_age_seconds": 60}
    args.update(kw)
    return check_proof(proof, **args)  # type: ignore[arg-type]


def test_rfc7638_section_3_1_vector() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
        "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rfc9449_section_6_1_ec_vector() -> None:
    jwk = {
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "crv": "P-256",
    }
    assert jwk_thumbprint(jwk) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def test_client_and_broker_agree_on_algorithms_and_thumbprint() -> None:
    assert BROKER_DPOP_ALGORITHMS == DPOP_ALGORITHMS
    assert not {a for a in DPOP_ALGORITHMS if a.startswith("HS") or a == "none"}
    key = DpopKey.generate(clock=lambda: NOW)
    assert jwk_thumbprint(key.public_jwk) == key.jkt
    proof = check(key.proof("POST", URL + "?x=1#f"))
    assert proof.jkt == key.jkt  # type: ignore[attr-defined]


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256", "PS256"])
def test_every_allowed_algorithm(alg: str) -> None:
    key = make_key(alg)
    proof = check(raw_proof(key, htu=URL, iat=NOW, alg=alg))
    assert proof.jkt == jwk_thumbprint(public_jwk(key))  # type: ignore[attr-defined]


def test_ath_binds_the_access_token() -> None:
    key = DpopKey.generate(clock=lambda: NOW)
    proof = key.proof("GET", "https://rs.example/x", access_token="tok")
    assert check(proof, method="GET", url="https://rs.example/x", access_token="tok")
    with pytest.raises(DpopError, match="ath"):
        check(proof, method="GET", url="https://rs.example/x", access_token="other")
    with pytest.raises(DpopError, match="ath"):
        check(key.proof("GET", "https://rs.example/x"), method="GET",
              url="https://rs.example/x", access_token="tok")  # fmt: skip
    assert key.proof("GET", "https://rs.example/x", access_token="tok") != proof  # fresh jti
    assert len(access_token_hash("tok")) == 43


ES = make_key("ES256")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: raw_proof(ES, htu=URL, iat=NOW, htm="GET"), "bad_htm"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, htm="post"), "bad_htm"),
        (lambda: raw_proof(ES, htu="https://errand.example/other", iat=NOW), "bad_htu"),
        (lambda: raw_proof(ES, htu="https://evil.example/token", iat=NOW), "bad_htu"),
        (lambda: raw_proof(ES, htu="http://errand.example/token", iat=NOW), "bad_htu"),
        (lambda: raw_proof(ES, htu="not a url", iat=NOW), "bad_htu"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW - 66), "iat_window"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW + 6), "iat_window"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, drop=("jti",)), "bad_jti"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, drop=("iat",)), "bad_iat"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, jti=""), "bad_jti"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, header={"typ": "JWT"}), "bad_typ"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, header={"typ": None}), "bad_typ"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, header={"jwk": None}), "no_jwk"),
        (lambda: raw_proof(ES, htu=URL, iat=NOW, header={"crit": ["x"]}), "crit"),
        (
            lambda: raw_proof(ES, htu=URL, iat=NOW, header={"jwk": public_jwk(make_key("ES256"))}),
            "bad_signature",
        ),
        (
            lambda: raw_proof(
                ES, htu=URL, iat=NOW, header={"jwk": {**public_jwk(ES), "d": "AAAA"}}
            ),
            "bad_jwk",
        ),
        # an ES256 proof whose header names a P-384 key: the curve does not fit the alg
        (
            lambda: raw_proof(ES, htu=URL, iat=NOW, header={"jwk": public_jwk(make_key("ES384"))}),
            "bad_jwk",
        ),
        (
            lambda: jwt.encode(
                {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW)},
                "k" * 32,
                algorithm="HS256",
                headers={"typ": "dpop+jwt", "jwk": public_jwk(ES)},
            ),
            "bad_alg",
        ),
        (
            lambda: jwt.encode(
                {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW)},
                None,
                algorithm="none",
                headers={"typ": "dpop+jwt"},
            ),
            "malformed",
        ),
        (lambda: "", "malformed"),
        (lambda: "a.b.c", "malformed"),
    ],
)
def test_refused(make, reason: str) -> None:
    with pytest.raises(DpopError) as err:
        check(make())
    assert err.value.reason == reason
    assert err.value.error == "invalid_dpop_proof"


def test_algorithms_can_be_narrowed() -> None:
    with pytest.raises(DpopError, match="alg"):
        check(raw_proof(make_key("EdDSA"), htu=URL, iat=NOW, alg="EdDSA"), algorithms=("ES256",))


def test_nonce_callback_decides() -> None:
    proof = raw_proof(ES, htu=URL, iat=NOW, nonce="n1")
    assert check(proof, nonce_ok=lambda n: n == "n1")
    with pytest.raises(DpopError) as err:
        check(proof, nonce_ok=lambda n: n == "n2")
    assert err.value.error == "use_dpop_nonce"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://Errand.Example/token", "https://errand.example/token"),
        ("HTTPS://errand.example:443/token", "https://errand.example/token"),
        ("http://h:80", "http://h/"),
        ("https://h/p?q=1#frag", "https://h/p"),
        ("https://[::1]:8443/t", "https://[::1]:8443/t"),
    ],
)
def test_htu_normalisation(a: str, b: str) -> None:
    assert normalise_htu(a) == normalise_htu(b)


@pytest.mark.parametrize("bad", ["ftp://h/x", "/token", "https://u@h/x", "https://h:99999/"])
def test_htu_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_htu(bad)
