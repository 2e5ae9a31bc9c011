"""The console's session and CSRF rules (broker/http/console/session.py): cookies this
broker did not issue, tampered tokens and foreign origins are refused, whatever the input."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.http.console import session as rules

KEY = rules.session_key(hashlib.sha256(b"admin-credential-for-tests").digest())
OTHER_KEY = rules.session_key(hashlib.sha256(b"another-admin-credential").digest())
MADE = rules.new_session(KEY, now=1000.0)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"


def test_an_issued_cookie_names_its_session_and_only_under_its_key():
    assert rules.session_digest(MADE.cookie, KEY) == MADE.digest
    assert MADE.digest == hashlib.sha256(rules._unb64(MADE.cookie.split(".")[0]) or b"").hexdigest()
    assert rules.session_digest(MADE.cookie, OTHER_KEY) is None  # a new admin credential
    assert MADE.cookie not in repr(MADE.record) and MADE.digest not in MADE.cookie


@settings(max_examples=80)
@given(position=st.integers(min_value=0), char=st.sampled_from(ALPHABET))
def test_any_one_character_change_to_a_cookie_is_refused(position, char):
    cookie = MADE.cookie
    i = position % len(cookie)
    tampered = cookie[:i] + char + cookie[i + 1 :]
    if tampered != cookie:
        assert rules.session_digest(tampered, KEY) is None


@settings(max_examples=60)
@given(cookie=st.one_of(st.none(), st.text(max_size=140), st.text(alphabet=ALPHABET, max_size=100)))
def test_arbitrary_cookies_are_refused_without_raising(cookie):
    assert rules.session_digest(cookie, KEY) is None


def test_a_cookie_with_appended_or_re_spelled_parts_is_refused():
    id_text, mac_text = MADE.cookie.split(".")
    for variant in (
        MADE.cookie + "=",
        MADE.cookie + ".",
        id_text + "=." + mac_text,
        mac_text + "." + id_text,
        id_text + "." + mac_text[:-1],
        "x" * 200,
    ):
        assert rules.session_digest(variant, KEY) is None, variant


@settings(max_examples=80)
@given(presented=st.one_of(st.none(), st.integers(), st.text(max_size=200)))
def test_a_csrf_token_matches_only_itself(presented):
    expected = MADE.record["csrf"]
    assert rules.tokens_match(expected, presented) is (presented == expected)


@settings(max_examples=100)
@given(position=st.integers(min_value=0), char=st.sampled_from(ALPHABET))
def test_a_tampered_login_token_is_refused(position, char):
    nonce = "nonce-value-0123456789"
    token = rules.login_token(KEY, nonce)
    assert rules.login_token_ok(KEY, nonce, token)
    i = position % len(token)
    tampered = token[:i] + char + token[i + 1 :]
    assert rules.login_token_ok(KEY, nonce, tampered) is (tampered == token)
    assert not rules.login_token_ok(KEY, nonce + "x", token)  # bound to its own cookie
    assert not rules.login_token_ok(KEY, None, token)
    assert not rules.login_token_ok(OTHER_KEY, nonce, token)


def test_sessions_end_at_the_idle_and_the_absolute_timeout():
    record = {"created": "1000.0", "last_seen": "1000.0", "csrf": "t"}
    alive = {"idle_seconds": 900, "max_seconds": 3600}
    assert rules.session_alive(record, now=1900.0, **alive)
    assert not rules.session_alive(record, now=1900.5, **alive)  # idle
    busy = {**record, "last_seen": "4500.0"}
    assert rules.session_alive(busy, now=4600.0, **alive)
    assert not rules.session_alive(busy, now=4600.5 + 100, **alive)  # absolute, though busy
    for broken in (
        None,
        {},
        {**record, "csrf": ""},
        {**record, "created": "nan"},
        {**record, "last_seen": "x"},
        {"last_seen": "1000.0", "csrf": "t"},
    ):
        assert not rules.session_alive(broken, now=1000.0, **alive)


ALLOWED = ["https://errand.example.com", "http://127.0.0.1:8080/"]


def test_posts_from_our_own_origins_only():
    ok = rules.same_origin_post
    assert ok("https://errand.example.com", None, ALLOWED)
    assert ok("https://ERRAND.example.com:443", None, ALLOWED)
    assert ok("http://127.0.0.1:8080", None, ALLOWED)
    assert ok(None, "http://127.0.0.1:8080/console/tasks/x", ALLOWED)  # no Origin: Referer
    for origin in (
        "null",
        "https://attacker.example",
        "http://errand.example.com",
        "https://errand.example.com.attacker.example",
        "http://127.0.0.1:8081",
        "",
    ):
        assert not ok(origin, "https://errand.example.com/console/", ALLOWED), origin
    assert not ok(None, None, ALLOWED)
    assert not ok(None, "https://attacker.example/console/", ALLOWED)


@settings(max_examples=80)
@given(
    origin=st.one_of(st.none(), st.text(max_size=80)),
    referer=st.one_of(st.none(), st.text(max_size=80)),
)
def test_the_origin_check_never_raises_and_accepts_only_listed_origins(origin, referer):
    accepted = rules.same_origin_post(origin, referer, ALLOWED)
    if accepted:
        seen = origin if origin is not None else referer
        assert rules.origin_of(seen or "") in {
            "https://errand.example.com",
            "http://127.0.0.1:8080",
        }
