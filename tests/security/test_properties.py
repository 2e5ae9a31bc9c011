"""Suite 1c: property-based tests (hypothesis) of the form parser and the claim matcher,
through POST /token so they hold whatever the internals become.

- Raw bodies of arbitrary bytes, and forms built from a valid one with one field replaced by
  arbitrary text: never a 5xx, always an OAuth JSON answer; a refusal writes no state; and a
  200 only ever grants what the form asked for *and* the allowance holds (soundness).
- Claims: arbitrary values (text, numbers, booleans, lists, objects, near misses of the rule
  value) for the claims a rule names: a token is accepted exactly when every rule claim, read
  as text (strings, or integers as decimal text), equals the rule's value; a `*` pattern
  never matches across `/` or control characters."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.domain.models import GRANT_TYPE_JWT_BEARER, GRANT_TYPE_TOKEN_EXCHANGE
from broker.store import keys as K
from broker.store.grant_record import grant_from
from tests.support.builders import DEPLOY_AUD
from tests.support.hostile import DROP, ObservedBroker
from tests.support.jws import unverified_claims

SETTINGS = settings(
    max_examples=250,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ALLOWED_AUDIENCES = {DEPLOY_AUD, "https://status.acme.example"}
ALLOWED_SCOPES = {"deploy:read", "deploy:write"}
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")

NASTY = st.sampled_from(
    [
        "",
        " ",
        "*",
        "%00",
        "\x00",
        "\r\n",
        "\u2028",
        "\ufeff",
        "é",
        "\uff44\uff45\uff50\uff4c\uff4f\uff59"  # fullwidth "deploy",
        "deploy:read",
        "deploy:write",
        "deploy:read deploy:write",
        "deploy:read,deploy:write",
        DEPLOY_AUD,
        DEPLOY_AUD.upper(),
        DEPLOY_AUD + "/",
        "https://status.acme.example",
        "a:b*",
        "../x",
        "errand:grant:x",
        "x" * 200,
        "1",
        "600",
        "601",
        "999999",
        '"}{"a":1',
    ]
)
# Any character a form can carry (lone surrogates cannot be encoded as UTF-8 at all).
CHARS = st.characters(blacklist_categories=("Cs",))
TEXT = st.one_of(NASTY, st.text(CHARS, max_size=60), st.text(CHARS, max_size=8))


def _assert_json_answer(resp: Any) -> dict[str, Any]:
    assert resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.headers.get("Cache-Control") == "no-store"
    body = resp.get_json()
    assert isinstance(body, dict)
    if resp.status_code != 200:
        assert body.get("error") and body.get("error_description")
        assert "access_token" not in body
    return dict(body)


@SETTINGS
@given(body=st.binary(max_size=2048))
@example(body=b"grant_type=%ZZ&subject_token=%")
@example(body=b"&&&===&&")
@example(body=b"a=" + b"%" * 1000)
@example(body=b"\x00" * 64)
def test_raw_bodies_never_5xx_and_write_nothing(world: ObservedBroker, body: bytes) -> None:
    before = world.grant_state()
    resp = world.post_token(body, content_type="application/x-www-form-urlencoded")
    answer = _assert_json_answer(resp)
    assert resp.status_code != 200, answer
    assert world.grant_state() == before


FIELDS = ["scope", "audience", "resource", "task_id", "purpose", "requested_lifetime"]


@SETTINGS
@given(
    grant=st.sampled_from(["token-exchange", "jwt-bearer"]),
    name=st.sampled_from(FIELDS),
    value=st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3)),
)
def test_one_hostile_field_grants_only_what_was_asked_and_allowed(
    world: ObservedBroker, grant: str, name: str, value: Any
) -> None:
    token = world.token()
    form = world.form(grant, token, **{name: value})
    before = world.grant_state()
    resp = world.post_token(form)
    body = _assert_json_answer(resp)
    if resp.status_code != 200:
        assert world.grant_state() == before
        return
    claims = unverified_claims(body["access_token"])
    values = value if isinstance(value, list) else [value]
    granted_aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert set(granted_aud) <= ALLOWED_AUDIENCES
    assert set(claims["scope"].split()) <= ALLOWED_SCOPES
    assert SAFE_ID.fullmatch(claims["task_id"])
    if name == "scope":
        assert len(values) == 1 and set(values[0].split(" ")) == set(claims["scope"].split())
    if name in ("audience", "resource"):
        assert set(granted_aud) == (
            {DEPLOY_AUD} | set(values) if name == "resource" else set(values)
        )
    if name == "task_id":
        assert values == [claims["task_id"]]
    if name == "requested_lifetime":
        assert values[0].isascii() and values[0].isdigit()
        assert claims["exp"] - claims["iat"] <= min(int(values[0]), 600)
    # What the grant holds in Redis is what the token says.
    grant_record = world.redis.hgetall(K.grant(claims["jti"]))
    assert grant_record["t"] == claims["task_id"]
    stored = grant_from(claims["jti"], grant_record)
    assert stored is not None and list(stored.audiences) == granted_aud


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(
                ["grant_type", "subject_token", "assertion", "subject_token_type", *FIELDS]
            )
            | st.text(CHARS, max_size=12),
            TEXT,
        ),
        max_size=12,
    ),
    grant=st.sampled_from([GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_JWT_BEARER, "x"]),
)
def test_arbitrary_form_encodings_never_5xx(world: ObservedBroker, pairs: list, grant: str) -> None:
    body = urlencode([("grant_type", grant), *pairs])
    before = world.grant_state()
    resp = world.post_token(body, content_type="application/x-www-form-urlencoded")
    _assert_json_answer(resp)
    assert resp.status_code != 200
    assert world.grant_state() == before


# -- the claim matcher -------------------------------------------------------------------------

RULE = {"repository_id": "100200300", "repository_owner_id": "4242", "ref": "refs/heads/main"}


def near_misses(expected: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(expected),
        st.just(int(expected)) if expected.isdigit() else st.just(expected.upper()),
        st.sampled_from(
            [
                expected + " ",
                " " + expected,
                expected + "\x00",
                expected + "\n",
                expected + "*",
                expected[:-1],
                expected + expected[-1],
                expected.replace("e", "\u0435"),  # Cyrillic e
                "*",
                "",
                [expected],
                {"value": expected},
                True,
                None,
            ]
        ),
        st.floats(allow_nan=False) | st.integers() | st.booleans(),
        st.text(CHARS, max_size=20),
    )


def _as_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


@SETTINGS
@given(
    repository_id=near_misses("100200300"),
    owner=near_misses("4242"),
    ref=near_misses("refs/heads/main"),
)
@example(repository_id="100200300", owner="4242", ref="refs/heads/main")
@example(repository_id=100200300, owner=4242, ref="refs/heads/main")
@example(repository_id=100200300.0, owner=4242, ref="refs/heads/main")
@example(repository_id="100200300", owner=True, ref="refs/heads/main")
def test_a_token_matches_exactly_when_every_rule_claim_equals_as_text(
    world: ObservedBroker, repository_id: Any, owner: Any, ref: Any
) -> None:
    claims = {"repository_id": repository_id, "repository_owner_id": owner, "ref": ref}
    token = world.token(**{k: (DROP if v is None else v) for k, v in claims.items()})
    resp = world.exchange(token=token)
    body = _assert_json_answer(resp)
    should_match = all(_as_text(claims[k]) == v for k, v in RULE.items())
    assert (resp.status_code == 200) == should_match, (claims, body)


def _release_pattern(raw: dict[str, Any]) -> None:
    raw["identities"][1]["match"][0]["claims"]["ref"] = "refs/heads/release/*"


@SETTINGS
@given(
    suffix=st.one_of(
        st.text(CHARS, max_size=20),
        st.sampled_from(["1.2", "", "a/b", "x\n", "x\x00", "/", "x/", "*", "..", "ü", "x\x7f"]),
    )
)
def test_a_star_matches_one_segment_of_printable_characters(make_world, suffix: str) -> None:
    world = _pattern_world(make_world)
    ref = "refs/heads/release/" + suffix
    token = world.token(ref=ref)
    resp = world.exchange(token=token, scope="release:write")
    _assert_json_answer(resp)
    one_segment = bool(re.fullmatch(r"[^/\x00-\x1f\x7f]+", suffix))
    assert (resp.status_code == 200) == one_segment, (suffix, resp.get_json())


_PATTERN_WORLDS: dict[int, ObservedBroker] = {}


def _pattern_world(make_world: Any) -> ObservedBroker:
    # One world per test function call (hypothesis reuses the fixture across examples).
    key = id(make_world)
    if key not in _PATTERN_WORLDS:
        _PATTERN_WORLDS.clear()
        _PATTERN_WORLDS[key] = make_world(_release_pattern)
    return _PATTERN_WORLDS[key]
