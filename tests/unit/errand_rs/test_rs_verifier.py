"""ErrandVerifier: offline checks of Errand's RFC 9068 access tokens against a live JWKS."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from broker.tokens.keyring import SigningKey, thumbprint
from errand_rs import (
    ErrandVerifier,
    InsufficientScope,
    InvalidToken,
    KeysUnavailable,
    VerifiedToken,
)
from tests.support.fake_broker import RS_AUDIENCE
from tests.support.jws import b64url, raw_jws


def reason_of(verifier: ErrandVerifier, token: str, **kw: object) -> str:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, **kw)  # type: ignore[arg-type]
    assert info.value.status_code == 401
    assert info.value.error == "invalid_token"
    return info.value.reason


def test_valid_token_is_accepted_with_its_claims(verifier, mint, published):
    token = mint(task_id="task-42", scopes=("orders:read", "orders:write"), epoch=3)
    verified = verifier.verify(token, require_scopes=["orders:read"])
    assert isinstance(verified, VerifiedToken)
    assert verified.task_id == "task-42"
    assert verified["task_id"] == "task-42"
    assert verified.subject == "acme-agent"
    assert verified.identity_type == "agent"
    assert verified.owner == "platform-team"
    assert verified.epoch == 3
    assert verified.scopes == {"orders:read", "orders:write"}
    assert verified.audiences == (RS_AUDIENCE,)
    assert verified.get("iss") == published.url
    assert token not in repr(verified)


def test_audience_list_containing_ours_is_accepted(verifier, mint):
    token = mint(audiences=("https://other.example", RS_AUDIENCE))
    assert verifier.verify(token).audiences == ("https://other.example", RS_AUDIENCE)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_rfc9068_typ_values_are_accepted(verifier, sign, typ):
    verifier.verify(sign(headers={"typ": typ}))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "JOSE", "", None, "at+jwt2"])
def test_other_typ_is_rejected(verifier, sign, typ):
    # RFC 9068 §4: an ID token or any other JWT signed with the same key is not an access token.
    token = sign(headers={"typ": typ})  # None: PyJWT leaves typ out
    assert reason_of(verifier, token) == "bad_typ"


def test_wrong_issuer_is_rejected_without_fetching_keys(broker, keyring, mint):
    broker.publish(keyring.active)
    verifier = ErrandVerifier(broker.url, RS_AUDIENCE)
    assert reason_of(verifier, mint(issuer="https://evil.example")) == "bad_iss"
    assert reason_of(verifier, mint(issuer=broker.url + "/")) == "bad_iss"  # exact match only
    assert broker.jwks_hits == 0


def test_wrong_audience_is_rejected(verifier, mint):
    assert reason_of(verifier, mint(audiences=("https://payments.acme.example",))) == "bad_aud"
    assert reason_of(verifier, mint(audiences=(RS_AUDIENCE + "/",))) == "bad_aud"


def test_expired_token_is_rejected_beyond_leeway_only(verifier, mint):
    now = int(time.time())
    assert reason_of(verifier, mint(iat=now - 400, exp=now - 31)) == "expired"
    verifier.verify(mint(iat=now - 400, exp=now - 10))  # within the 30 s leeway


def test_leeway_zero_rejects_at_exp(published, mint):
    verifier = ErrandVerifier(published.url, RS_AUDIENCE, leeway_seconds=0)
    now = int(time.time())
    assert reason_of(verifier, mint(iat=now - 300, exp=now)) == "expired"


def test_token_issued_in_the_future_is_rejected(verifier, mint):
    now = int(time.time())
    assert reason_of(verifier, mint(iat=now + 120, exp=now + 400)) == "iat_future"


def test_absurd_lifetime_is_rejected(verifier, mint):
    now = int(time.time())
    assert reason_of(verifier, mint(iat=now, exp=now + 10 * 86400)) == "bad_lifetime"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "9999999999"},
        {"exp": 1.5e10},
        {"iat": True},
        {"epoch": "0"},
        {"epoch": True},
        {"epoch": -1},
        {"task_id": 7},
        {"sub": ""},
        {"scope": ["orders:read"]},
        {"aud": []},
        {"aud": [RS_AUDIENCE, 5]},
        {"nbf": 9_999_999_999},
    ],
)
def test_malformed_claims_are_rejected(verifier, sign, claims):
    reason_of(verifier, sign(claims))


@pytest.mark.parametrize(
    "missing", ["task_id", "epoch", "owner", "identity_type", "jti", "client_id"]
)
def test_missing_errand_claims_are_rejected(verifier, sign, missing):
    # Revocation keys on these: a token without them could not be revoked by the feed.
    reason_of(verifier, sign(drop=(missing,)))


def test_alg_none_is_rejected(verifier, keyring, published):
    payload = jwt.decode(
        jwt.encode({"iss": published.url}, "x" * 32, algorithm="HS256"),
        options={"verify_signature": False},
    )
    header = {"alg": "none", "typ": "at+jwt", "kid": keyring.active.kid}
    unsigned = raw_jws(header, payload).rsplit(".", 1)[0] + "."
    assert reason_of(verifier, unsigned) == "malformed"  # no signature segment at all
    assert reason_of(verifier, raw_jws(header, payload)) == "bad_alg"


def test_hs256_signed_with_our_public_key_is_rejected(verifier, sign, keyring, published):
    """The classic key-confusion attack: HMAC with the public key (PEM or JWK) as secret."""
    claims = jwt.decode(sign(), options={"verify_signature": False})
    pem = keyring.active.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(keyring.active.public_jwk()).encode()):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": keyring.active.kid}
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert reason_of(verifier, f"{signing_input}.{b64url(mac)}") == "bad_alg"


def test_header_alg_must_match_the_keys_algorithm(verifier, sign, keyring, published):
    # ES384 is on the allow-list, but our key is an ES256 key: the key decides.
    token = sign()
    _header, payload, sig = token.split(".")
    forged = b64url(
        json.dumps({"alg": "ES384", "typ": "at+jwt", "kid": keyring.active.kid}).encode()
    )
    assert reason_of(verifier, f"{forged}.{payload}.{sig}") == "alg_mismatch"


def test_signature_by_another_key_under_our_kid_is_rejected(verifier, sign, keyring, other_key):
    forged = jwt.encode(
        jwt.decode(sign(), options={"verify_signature": False}),
        other_key.private_key,
        algorithm="ES256",
        headers={"kid": keyring.active.kid, "typ": "at+jwt"},
    )
    assert reason_of(verifier, forged) == "bad_signature"


def test_tampered_payload_is_rejected(verifier, mint):
    header, _payload, sig = mint().split(".")
    claims = jwt.decode(mint(scopes=("orders:admin",)), options={"verify_signature": False})
    assert (
        reason_of(verifier, f"{header}.{b64url(json.dumps(claims).encode())}.{sig}")
        == "bad_signature"
    )


def test_duplicate_claim_members_are_rejected(verifier, keyring, published, sign):
    claims = jwt.decode(sign(), options={"verify_signature": False})
    body = json.dumps(claims)[:-1] + ', "task_id": "other-task"}'
    header = {"alg": "ES256", "typ": "at+jwt", "kid": keyring.active.kid}
    assert reason_of(verifier, raw_jws(header, body)) == "malformed"


def test_crit_header_is_rejected(verifier, sign):
    assert reason_of(verifier, sign(headers={"crit": ["exp"], "exp": 1})) == "crit"


def test_jku_and_x5u_cause_no_request(verifier, sign, published):
    token = sign(headers={"jku": published.url + "/attacker-jwks", "x5u": published.url + "/x5u"})
    verifier.verify(token)
    assert published.other_paths == []


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c.d", "a.b.c", "x" * 9000, "eyJ.eyJ.sig with space"]
)
def test_garbage_is_rejected_as_malformed(verifier, token):
    assert reason_of(verifier, token) == "malformed"


def test_unknown_kid_triggers_a_bounded_refetch(broker, keyring, other_key, sign, mono):
    broker.publish(keyring.active)
    verifier = ErrandVerifier(
        broker.url, RS_AUDIENCE, jwks_refresh_cooldown_seconds=10, monotonic=mono
    )
    verifier.verify(sign())
    assert broker.jwks_hits == 1
    for _ in range(5):  # right after a fetch: no refetch at all
        assert reason_of(verifier, sign(key=other_key)) == "unknown_kid"
    assert broker.jwks_hits == 1
    mono.advance(9)
    assert reason_of(verifier, sign(key=other_key)) == "unknown_kid"
    assert broker.jwks_hits == 1  # still inside the cooldown
    mono.advance(1)
    for _ in range(20):  # a flood of unknown kids: one refetch per cooldown, not twenty
        assert reason_of(verifier, sign(key=other_key)) == "unknown_kid"
    assert broker.jwks_hits == 2
    # The broker publishes the new key (before it signs, per docs/security-model.md); after the
    # cooldown an unknown kid is looked up again and found.
    broker.publish(keyring.active, other_key)
    mono.advance(10)
    verifier.verify(sign(key=other_key))
    assert broker.jwks_hits == 3


def test_cached_keys_are_kept_while_refresh_fails(broker, keyring, sign, mono):
    broker.publish(keyring.active)
    verifier = ErrandVerifier(
        broker.url,
        RS_AUDIENCE,
        jwks_cache_seconds=60,
        jwks_refresh_cooldown_seconds=0,
        monotonic=mono,
    )
    verifier.verify(sign())
    broker.jwks_down = True
    mono.advance(60)
    verifier.verify(sign())  # stale, refresh failed, cached key still used
    assert broker.jwks_hits == 2


def test_key_removed_from_jwks_stops_verifying_after_cache_expiry(
    broker, keyring, other_key, sign, mono
):
    broker.publish(keyring.active, other_key)
    verifier = ErrandVerifier(
        broker.url,
        RS_AUDIENCE,
        jwks_cache_seconds=60,
        jwks_refresh_cooldown_seconds=0,
        monotonic=mono,
    )
    verifier.verify(sign(key=other_key))
    broker.publish(keyring.active)  # emergency removal
    mono.advance(59)
    verifier.verify(sign(key=other_key))  # the cached set still has it until it expires
    assert broker.jwks_hits == 1
    mono.advance(1)
    assert reason_of(verifier, sign(key=other_key)) == "unknown_kid"
    verifier.verify(sign())
    assert broker.jwks_hits == 2


def test_cooldown_does_not_delay_a_scheduled_refresh(broker, keyring, other_key, sign, mono):
    # The cooldown bounds refetches caused by unknown kids; a cache shorter than the cooldown
    # still expires on time (an emergency key removal must not wait for the cooldown).
    broker.publish(keyring.active, other_key)
    verifier = ErrandVerifier(
        broker.url,
        RS_AUDIENCE,
        jwks_cache_seconds=20,
        jwks_refresh_cooldown_seconds=300,
        monotonic=mono,
    )
    verifier.verify(sign(key=other_key))
    broker.publish(keyring.active)  # emergency removal
    mono.advance(20)
    assert reason_of(verifier, sign(key=other_key)) == "unknown_kid"
    assert broker.jwks_hits == 2


def test_failed_scheduled_refresh_is_retried_after_the_cooldown_not_per_request(
    broker, keyring, sign, mono
):
    broker.publish(keyring.active)
    verifier = ErrandVerifier(
        broker.url,
        RS_AUDIENCE,
        jwks_cache_seconds=10,
        jwks_refresh_cooldown_seconds=0.5,
        monotonic=mono,
    )
    verifier.verify(sign())
    broker.jwks_down = True
    mono.advance(10)
    for _ in range(10):
        verifier.verify(sign())  # cached key still used
    assert broker.jwks_hits == 2
    broker.jwks_down = False
    mono.advance(0.5)  # the cooldown is over, but the retry waits max(cooldown, 1 s)
    verifier.verify(sign())
    assert broker.jwks_hits == 2
    mono.advance(0.5)
    verifier.verify(sign())
    assert broker.jwks_hits == 3


def test_shorter_server_max_age_wins(broker, keyring, sign, mono):
    broker.publish(keyring.active)
    broker.jwks_cache_control = "public, max-age=0"
    verifier = ErrandVerifier(
        broker.url,
        RS_AUDIENCE,
        jwks_cache_seconds=300,
        jwks_refresh_cooldown_seconds=5,
        monotonic=mono,
    )
    verifier.verify(sign())
    mono.advance(4)
    verifier.verify(sign())
    assert broker.jwks_hits == 1  # max-age=0 is held to the cooldown, not refetched per token
    mono.advance(1)
    verifier.verify(sign())
    assert broker.jwks_hits == 2


def test_cold_cache_with_broker_down_is_keys_unavailable(broker, sign):
    broker.jwks_down = True
    verifier = ErrandVerifier(broker.url, RS_AUDIENCE)
    with pytest.raises(KeysUnavailable):
        verifier.verify(sign())
    with pytest.raises(KeysUnavailable):  # within the cold retry interval: no second fetch
        verifier.verify(sign())
    assert broker.jwks_hits == 1


def test_missing_scope_is_insufficient_scope(verifier, mint):
    token = mint(scopes=("orders:read",))
    with pytest.raises(InsufficientScope) as info:
        verifier.verify(token, require_scopes=["orders:read", "orders:write"])
    err = info.value
    assert err.status_code == 403
    assert err.error == "insufficient_scope"
    assert 'scope="orders:read orders:write"' in err.www_authenticate()
    verifier.verify(token, require_scopes="orders:read")  # a string is space-separated scopes


def _signing_key(private: object, alg: str) -> SigningKey:
    probe = SigningKey(kid="", alg=alg, private_key=private)  # type: ignore[arg-type]
    return SigningKey(kid=thumbprint(probe.public_jwk()), alg=alg, private_key=private)  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["RS256", "PS256", "EdDSA"])
def test_other_allowed_algorithms_verify_with_their_key(broker, sign, alg):
    if alg == "EdDSA":
        private: object = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = _signing_key(private, alg)
    broker.publish(key)
    verifier = ErrandVerifier(broker.url, RS_AUDIENCE)
    verifier.verify(sign(key=key))
    if alg == "RS256":  # the key says RS256: a PS256 header is refused though PS256 is allowed
        ps = jwt.encode(
            jwt.decode(sign(key=key), options={"verify_signature": False}),
            private,
            algorithm="PS256",
            headers={"kid": key.kid, "typ": "at+jwt"},
        )
        assert reason_of(verifier, ps) == "alg_mismatch"


def test_hmac_keys_in_the_jwks_are_never_used(broker, keyring, sign):
    broker.jwks = {
        "keys": [{"kty": "oct", "kid": "hmac", "k": b64url(b"secret" * 6), "alg": "HS256"}]
    }
    verifier = ErrandVerifier(broker.url, RS_AUDIENCE, jwks_refresh_cooldown_seconds=60)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "hmac"}
    claims = jwt.decode(sign(), options={"verify_signature": False})
    token = jwt.encode(claims, b"secret" * 6, algorithm="HS256", headers=header)
    assert reason_of(verifier, token) == "bad_alg"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"leeway_seconds": 61},
        {"leeway_seconds": -1},
        {"algorithms": ["HS256"]},
        {"algorithms": ["none"]},
    ],
)
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        ErrandVerifier("https://errand.example", RS_AUDIENCE, **kwargs)


def test_issuer_must_be_a_url():
    with pytest.raises(ValueError):
        ErrandVerifier("errand.example", RS_AUDIENCE)
