"""Suite 1a: hostile subject tokens (RFC 8725, OAuth security BCP), through POST /token on
both grants that carry a workload JWT: RFC 8693 `subject_token` (refused with
invalid_request, RFC 8693 §2.2.2) and RFC 7523 `assertion` (invalid_grant, RFC 7523 §3.1).

Every case goes through ObservedBroker.refused (tests/support/hostile.py): a 4xx OAuth JSON error
with no-store, no token, no state written in Redis, exactly one audit event carrying the
token's SHA-256 and never the token."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from broker.tokens.keyring import SigningKey
from tests.support.builders import AUDIENCE, BROKER_ISSUER, UNIT_ISSUER
from tests.support.hostile import DROP, NOW, ObservedBroker
from tests.support.jws import b64url, es256_sign, hs256_sign, new_es256_key, public_pem, segment

GRANTS = ("token-exchange", "jwt-bearer")
ERROR = {"token-exchange": "invalid_request", "jwt-bearer": "invalid_grant"}
PREFIX = {"token-exchange": "subject_token:", "jwt-bearer": "assertion:"}


def _raw_sign(key: SigningKey, header_json: str, payload_json: str | bytes) -> str:
    """Sign exact header and payload bytes (duplicate keys survive)."""
    payload = payload_json if isinstance(payload_json, bytes) else payload_json.encode()
    return es256_sign(key, header_json.encode(), payload)


def _respell_signature(token: str) -> str:
    """The same signature bytes with the spare low bits of the last character set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    head, sig = token.rsplit(".", 1)
    assert len(sig) % 4 == 2  # 64 bytes: 86 characters, 4 bits of the last one unused
    return f"{head}.{sig[:-1]}{alphabet[alphabet.index(sig[-1]) ^ 0b1111]}"


def _claims_json(w: ObservedBroker, **overrides: Any) -> str:
    return json.dumps(w.claims(**overrides), separators=(",", ":"))


def _attacker_headers(w: ObservedBroker, attacker: SigningKey, kid: Any) -> dict[str, Any]:
    base = w.listener.url
    return {
        "alg": "ES256",
        "typ": "JWT",
        "kid": kid,
        "jku": base + "/jwks.json",
        "x5u": base + "/cert.pem",
        "jwk": attacker.public_jwk(),
        "x5c": [b64url(b"not really a certificate" * 4)],
    }


def _broker_access_token(w: ObservedBroker) -> str:
    resp = w.exchange()
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["access_token"])


def _broker_key_as_issuer(w: ObservedBroker) -> str:
    key = w.svc.keyring.active
    claims = w.claims(iss=BROKER_ISSUER)
    return es256_sign(key, {"alg": "ES256", "typ": "JWT", "kid": key.kid}, claims)


# name -> builder(world) -> token. Each must be refused at the token layer.
TOKENS: dict[str, Callable[[ObservedBroker], str]] = {
    # -- algorithm confusion -----------------------------------------------------------------
    "alg_none_unsigned": lambda w: w.token(w.header(alg="none")).rsplit(".", 1)[0] + ".",
    "alg_none_with_signature": lambda w: w.token(w.header(alg="none")),
    "alg_None_mixed_case": lambda w: w.token(w.header(alg="nOnE")),
    "alg_missing": lambda w: w.token(w.header(alg=DROP)),
    "alg_not_a_string": lambda w: w.token(w.header(alg=["ES256"])),
    "hs256_keyed_with_issuer_public_pem": lambda w: hs256_sign(
        public_pem(w.key), w.header(alg="HS256"), w.claims()
    ),
    "hs256_keyed_with_issuer_public_jwk": lambda w: hs256_sign(
        json.dumps(w.key.public_jwk()).encode(), w.header(alg="HS256"), w.claims()
    ),
    "rs256_header_on_es256_signature": lambda w: w.token(w.header(alg="RS256")),
    "es512_header_on_es256_signature": lambda w: w.token(w.header(alg="ES512")),
    # -- kid as an injection vector: only ever a dictionary key ------------------------------
    "kid_path_traversal": lambda w: w.token(w.header(kid="../../etc/passwd")),
    "kid_sql": lambda w: w.token(w.header(kid="' OR 1=1--")),
    "kid_redis_glob": lambda w: w.token(w.header(kid="*")),
    "kid_nul_and_newline": lambda w: w.token(w.header(kid="abc\x00\r\n")),
    "kid_300_chars": lambda w: w.token(w.header(kid="k" * 300)),
    "kid_2kB_header_over_1KiB": lambda w: w.token(w.header(kid="k" * 2048)),
    "kid_10kB": lambda w: w.token(w.header(kid="k" * 10_240)),
    "kid_integer": lambda w: w.token(w.header(kid=123)),
    "kid_bool": lambda w: w.token(w.header(kid=True)),
    "kid_list": lambda w: w.token(w.header(kid=[w.key.kid])),
    "kid_object": lambda w: w.token(w.header(kid={"$ne": ""})),
    "kid_empty": lambda w: w.token(w.header(kid="")),
    # -- key material in the header: never fetched, never trusted ----------------------------
    "jku_x5u_jwk_x5c_attacker_kid": lambda w: es256_sign(
        (a := new_es256_key()), _attacker_headers(w, a, a.kid), w.claims()
    ),
    "jku_x5u_jwk_x5c_issuer_kid": lambda w: es256_sign(
        (a := new_es256_key()), _attacker_headers(w, a, w.key.kid), w.claims()
    ),
    "embedded_jwk_without_kid": lambda w: es256_sign(
        (a := new_es256_key()), {"alg": "ES256", "typ": "JWT", "jwk": a.public_jwk()}, w.claims()
    ),
    "signed_by_another_key_with_issuer_kid": lambda w: es256_sign(
        new_es256_key(), w.header(), w.claims()
    ),
    # -- critical and typed tokens -----------------------------------------------------------
    "crit_exp": lambda w: w.token(w.header(crit=["exp"])),
    "crit_b64_false": lambda w: w.token(w.header(crit=["b64"], b64=False)),
    "typ_at_jwt_signed_by_issuer": lambda w: w.token(w.header(typ="at+jwt")),
    "typ_not_a_string": lambda w: w.token(w.header(typ=1)),
    "broker_access_token_as_subject": _broker_access_token,
    "broker_key_posing_as_issuer": _broker_key_as_issuer,
    # -- nested JWT (cty: JWT): the payload must be a JSON object of claims ------------------
    "nested_jwt_payload_is_a_jwt": lambda w: es256_sign(
        w.key, w.header(cty="JWT"), w.token().encode()
    ),
    "nested_jwt_payload_is_a_json_string": lambda w: es256_sign(
        w.key, w.header(cty="JWT"), json.dumps(w.token()).encode()
    ),
    "payload_is_a_json_array": lambda w: es256_sign(w.key, w.header(), b"[1,2,3]"),
    # -- audience ------------------------------------------------------------------------------
    "id_token_for_another_audience": lambda w: w.token(aud="another-client-id"),
    "aud_list_without_ours": lambda w: w.token(aud=["a", "b", "https://deploy.acme.example"]),
    "aud_empty_list": lambda w: w.token(aud=[]),
    "aud_list_with_a_number": lambda w: w.token(aud=[AUDIENCE, 7]),
    "aud_upper_case": lambda w: w.token(aud=AUDIENCE.upper()),
    "aud_trailing_space": lambda w: w.token(aud=AUDIENCE + " "),
    "aud_prefix_of_ours": lambda w: w.token(aud=AUDIENCE[:-1]),
    "aud_object": lambda w: w.token(aud={"aud": AUDIENCE}),
    "aud_missing": lambda w: w.token(aud=DROP),
    # strict_aud: ours among others is a token for several parties (opt-in per issuer only)
    "aud_ours_and_another": lambda w: w.token(aud=[AUDIENCE, "https://peer.example"]),
    "aud_ours_twice": lambda w: w.token(aud=[AUDIENCE, AUDIENCE]),
    "azp_another_party": lambda w: w.token(azp="another-client-id"),
    "azp_null": lambda w: w.token(azp=None),
    # -- delegation: a token that says someone acts for its subject is not its subject -------
    "act_another_party": lambda w: w.token(act={"sub": "agent-mallory"}),
    "act_nested": lambda w: w.token(act={"sub": "agent-a", "act": {"sub": "agent-b"}}),
    "may_act_another_party": lambda w: w.token(may_act={"sub": "agent-mallory"}),
    # -- time ----------------------------------------------------------------------------------
    "expired": lambda w: w.token(iat=int(NOW) - 4000, nbf=int(NOW) - 4000, exp=int(NOW) - 3600),
    "nbf_in_the_future": lambda w: w.token(nbf=int(NOW) + 3600),
    "iat_far_future": lambda w: w.token(iat=int(NOW) + 10 * 365 * 86400, exp=int(NOW) + 300),
    "exp_far_future": lambda w: w.token(exp=int(NOW) + 10 * 365 * 86400),
    "exp_numeric_string": lambda w: w.token(exp=str(int(NOW) + 300)),
    "exp_bool": lambda w: w.token(exp=True),
    "exp_huge_number": lambda w: w.token(exp=1e300),
    "iat_negative": lambda w: w.token(iat=-1),
    "iat_missing": lambda w: w.token(iat=DROP),
    "exp_missing": lambda w: w.token(exp=DROP),
    # -- issuer ----------------------------------------------------------------------------------
    "iss_unknown": lambda w: w.token(iss="https://attacker.example"),
    "iss_trailing_slash": lambda w: w.token(iss=UNIT_ISSUER + "/"),
    "iss_list": lambda w: w.token(iss=[UNIT_ISSUER]),
    "iss_missing": lambda w: w.token(iss=DROP),
    # -- duplicate JSON members: our parser refuses what libraries silently accept --------------
    "duplicate_alg_in_header": lambda w: _raw_sign(
        w.key, f'{{"alg":"ES256","typ":"JWT","kid":"{w.key.kid}","alg":"none"}}', _claims_json(w)
    ),
    "duplicate_kid_in_header": lambda w: _raw_sign(
        w.key, f'{{"alg":"ES256","kid":"{w.key.kid}","kid":"../x"}}', _claims_json(w)
    ),
    "duplicate_aud_in_payload": lambda w: _raw_sign(
        w.key,
        json.dumps(w.header()),
        _claims_json(w, aud="other")[:-1] + f',"aud":"{AUDIENCE}"}}',
    ),
    "duplicate_repository_id_in_payload": lambda w: _raw_sign(
        w.key,
        json.dumps(w.header()),
        _claims_json(w, repository_id="999")[:-1] + ',"repository_id":"100200300"}',
    ),
    # -- encodings --------------------------------------------------------------------------------
    "payload_not_utf8": lambda w: _raw_sign(
        w.key, json.dumps(w.header()), _claims_json(w)[:-1].encode() + b',"x":"\xff\xfe"}'
    ),
    "header_not_utf8": lambda w: es256_sign(
        w.key, json.dumps(w.header())[:-1].encode() + b',"x":"\xc0\xaf"}', w.claims()
    ),
    "payload_utf16": lambda w: es256_sign(w.key, w.header(), _claims_json(w).encode("utf-16")),
    "payload_with_bom": lambda w: es256_sign(
        w.key, w.header(), b"\xef\xbb\xbf" + _claims_json(w).encode()
    ),
    "payload_nan": lambda w: _raw_sign(
        w.key, json.dumps(w.header()), _claims_json(w)[:-1] + ',"exp2":NaN}'
    ),
    # -- shapes ----------------------------------------------------------------------------------
    "jwe_five_segments": lambda w: w.token() + ".AAAA.BBBB",
    "json_serialization": lambda w: json.dumps(
        {"payload": segment(w.claims()), "signatures": [{"protected": segment(w.header())}]}
    ),
    "padded_base64": lambda w: ".".join(p + "==" for p in w.token().split(".")),
    # one token, one spelling: the ES256 signature's last character has 4 spare bits
    "signature_with_trailing_bits_set": lambda w: _respell_signature(w.token()),
    "leading_space": lambda w: " " + w.token(),
    "trailing_newline": lambda w: w.token() + "\n",
    "over_the_8KiB_token_limit": lambda w: w.token(padding="p" * 9000),
    "claim_of_10KiB": lambda w: w.token(repository="acme/" + "a" * 10_240),
    # -- claims carrying injection payloads: no identity matches them ------------------------
    "claim_with_nul": lambda w: w.token(repository_id="100200300\x00"),
    "claim_log_injection": lambda w: w.token(
        ref='refs/heads/main\r\n{"event":"token.exchange","outcome":"issued"}'
    ),
    "claim_redis_glob": lambda w: w.token(repository_id="*"),
    "claim_as_list": lambda w: w.token(repository_id=["100200300"]),
    "claim_as_object": lambda w: w.token(ref={"$regex": ".*"}),
    "claim_as_bool": lambda w: w.token(ref_protected=True, ref=True),
    "claim_as_float": lambda w: w.token(repository_id=100200300.0),
    "claim_homoglyph": lambda w: w.token(ref="refs/heads/m\u0430in"),  # Cyrillic a
}


@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize("case", sorted(TOKENS))
def test_hostile_token_is_refused_without_state(
    world: ObservedBroker, case: str, grant: str
) -> None:
    token = TOKENS[case](world)
    refusal = world.refused(
        lambda rid: world.post_token(world.form(grant, token), rid=rid),
        token=token,
        error=ERROR[grant],
        prefix=PREFIX[grant],
    )
    # Nothing a token carries causes egress: the listener named in jku/x5u saw nothing.
    assert world.listener.hits == []
    assert refusal.event.get("identity") in (None, "")
    # The configured JWKS is fetched at most once (the first unknown kid), never more.
    assert world.fetcher.calls <= 1


def test_audience_list_of_ours_alone_is_accepted(world: ObservedBroker) -> None:
    """RFC 7519 §4.1.3: `aud` may be an array; an array of exactly our audience is accepted.
    Ours among others is refused unless the issuer sets allow_multiple_audiences (the
    aud_ours_and_another case above)."""
    resp = world.exchange(token=world.token(aud=[AUDIENCE]))
    assert resp.status_code == 200, resp.get_json()


def test_integer_claim_matches_its_text_but_float_and_list_do_not(world: ObservedBroker) -> None:
    """Claims compare as text: an integer is its decimal text (documented); a float or a list
    holding the value never matches (a refused case above proves the list and the float)."""
    resp = world.exchange(token=world.token(repository_id=100200300, repository_owner_id=4242))
    assert resp.status_code == 200, resp.get_json()


def test_claim_of_10KiB_reaches_the_matcher_and_the_audit_stays_bounded(make_world) -> None:
    """With the subject-token limit raised to 64 KiB, a 10 KiB claim passes the size check and
    reaches the matcher: it matches nothing, and the audit event stays small (values are cut
    at 256 characters), so one token cannot write 10 KiB into the audit stream."""
    w = make_world(max_subject_token_bytes=65536)
    big = "9" * 10_240
    token = w.token(repository_id=big)
    refusal = w.refused(
        lambda rid: w.post_token(w.form("token-exchange", token), rid=rid),
        token=token,
        error="invalid_request",
        prefix="subject_token:",
    )
    assert refusal.event["reason"] == "no_matching_identity"
    assert len(json.dumps(refusal.event)) < 4096
    assert big not in json.dumps(refusal.event)


def test_header_parameters_pointing_elsewhere_cause_no_request(world: ObservedBroker) -> None:
    """jku/x5u/x5c/jwk on a token signed by the trusted key: accepted, and the URLs they
    name are never requested (only the configured JWKS is, once)."""
    attacker = new_es256_key()
    headers = {
        "alg": "ES256",
        "typ": "JWT",
        "kid": world.key.kid,
        "jku": world.listener.url + "/jwks.json",
        "x5u": world.listener.url + "/cert.pem",
        "jwk": attacker.public_jwk(),
        "x5c": [b64url(b"junk" * 20)],
    }
    resp = world.exchange(token=es256_sign(world.key, headers, world.claims()))
    assert resp.status_code == 200, resp.get_json()
    assert world.listener.hits == []
    assert world.fetcher.calls == 1


def test_random_unknown_kids_do_not_amplify(world: ObservedBroker) -> None:
    """200 tokens with random kids: one JWKS fetch (the cooldown), 200 refusals, no state."""
    before = world.state_keys()
    for _ in range(200):
        token = world.token(world.header(kid=secrets.token_urlsafe(12)))
        resp = world.exchange(token=token)
        assert resp.status_code == 400
    assert world.fetcher.calls == 1
    assert world.state_keys() == before
    assert len(world.stream()) == 200


def test_same_jti_from_another_configured_issuer_is_not_a_replay(make_world, issuer_key) -> None:
    """Replay is keyed on issuer + jti: a second issuer's token with the same jti is not
    refused as a replay, and the first issuer's jti stays burned."""
    import copy

    def second_issuer(raw: dict[str, Any]) -> None:
        other = copy.deepcopy(raw["issuers"][0])
        other.update(id="gha2", issuer=UNIT_ISSUER + "/two")
        raw["issuers"].append(other)
        ident = copy.deepcopy(raw["identities"][0])
        ident["id"] = "acme-deploy-2"
        ident["match"][0]["issuer"] = "gha2"
        raw["identities"].append(ident)

    w = make_world(second_issuer)
    jti = "shared-" + secrets.token_hex(4)
    assert w.exchange(token=w.token(jti=jti)).status_code == 200
    again = w.exchange(token=w.token(jti=jti))
    assert again.status_code == 400 and "already been used" in again.get_json()["error_description"]
    other = w.exchange(token=w.token(jti=jti, iss=UNIT_ISSUER + "/two"))
    assert other.status_code == 200, other.get_json()
