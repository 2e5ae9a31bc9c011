"""Suite 1b: hostile request parameters around a *valid* subject token: scope and audience
strings with separators and wildcards, task ids with Redis-key and log-injection characters,
non-UTF-8 bytes and control characters, oversized bodies, odd content types, and forgeries of
Errand's own access tokens at /introspect, /revoke and /tasks/complete.

A refused request must not burn the subject token's jti: after every refusal the same token
is exchanged once more with a clean form and must succeed."""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from broker.domain.models import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from broker.store import keys as K
from tests.support.builders import CLIENT_ID, CLIENT_SECRET, DEPLOY_AUD
from tests.support.hostile import ObservedBroker, observe
from tests.support.jws import es256_sign, hs256_sign, new_es256_key, public_pem, unverified_claims

# (parameter, value, expected error). Values are sent form-encoded, so "\n" arrives as a
# newline and "%00" as the three characters % 0 0.
PARAMS: list[tuple[str, Any, str]] = [
    # scope: RFC 6749 §3.3 scope-tokens joined by single spaces; nothing is a wildcard.
    ("scope", "*", "invalid_scope"),
    ("scope", "deploy:*", "invalid_scope"),
    ("scope", "deploy:read,deploy:write", "invalid_scope"),
    ("scope", "deploy:read;deploy:write", "invalid_scope"),
    ("scope", "deploy:read  deploy:write", "invalid_scope"),
    ("scope", " deploy:write", "invalid_scope"),
    ("scope", "deploy:write ", "invalid_scope"),
    ("scope", "deploy:write\ndeploy:admin", "invalid_request"),
    ("scope", "deploy:write\tdeploy:admin", "invalid_request"),
    ("scope", "deploy:write\x00", "invalid_request"),
    ("scope", "deploy:write%00", "invalid_scope"),
    ("scope", "DEPLOY:WRITE", "invalid_scope"),
    ("scope", "deploy:write\u00a0", "invalid_scope"),
    ("scope", "deploy:write deploy:admin", "invalid_scope"),
    ("scope", "x" * 129, "invalid_scope"),
    ("scope", " ".join(["deploy:read"] * 65), "invalid_scope"),
    # audience / resource: exact strings from the allowance; no wildcard, list or prefix.
    ("audience", "*", "invalid_target"),
    ("audience", "https://*.acme.example", "invalid_target"),
    ("audience", DEPLOY_AUD + ",https://evil.example", "invalid_target"),
    ("audience", DEPLOY_AUD + " https://status.acme.example", "invalid_target"),
    ("audience", DEPLOY_AUD + "/", "invalid_target"),
    ("audience", DEPLOY_AUD + "/../admin", "invalid_target"),
    ("audience", DEPLOY_AUD.upper(), "invalid_target"),
    ("audience", DEPLOY_AUD + "%00", "invalid_target"),
    ("audience", DEPLOY_AUD + "\n", "invalid_request"),
    ("audience", DEPLOY_AUD + "\x00", "invalid_request"),
    ("audience", "", "invalid_request"),
    ("audience", "a" * 513, "invalid_request"),
    ("audience", [DEPLOY_AUD, "https://evil.example"], "invalid_target"),
    ("resource", "javascript:alert(1)", "invalid_target"),
    ("resource", DEPLOY_AUD + "#frag", "invalid_request"),
    ("resource", "//deploy.acme.example", "invalid_request"),
    # task_id: a safe alphabet, because it becomes part of Redis keys and log lines.
    ("task_id", "a:b*", "invalid_request"),
    ("task_id", "*", "invalid_request"),
    ("task_id", "errand:*:grant:*", "invalid_request"),
    ("task_id", "a?b", "invalid_request"),
    ("task_id", "a[b]", "invalid_request"),
    ("task_id", '\r\n{"event":"fake"}', "invalid_request"),
    ("task_id", 'x"}\n{"event":"task.completed"', "invalid_request"),
    ("task_id", "../etc/passwd", "invalid_request"),
    ("task_id", "a/b", "invalid_request"),
    ("task_id", "a b", "invalid_request"),
    ("task_id", "täsk", "invalid_request"),
    ("task_id", "task\u2028x", "invalid_request"),
    ("task_id", "%2A", "invalid_request"),
    ("task_id", "-leading-dash", "invalid_request"),
    ("task_id", "", "invalid_request"),
    ("task_id", "t" * 129, "invalid_request"),
    # other parameters
    ("purpose", "p" * 257, "invalid_request"),
    ("purpose", "line one\nline two", "invalid_request"),
    ("purpose", "", "invalid_request"),
    ("requested_lifetime", "0", "invalid_request"),
    ("requested_lifetime", "-5", "invalid_request"),
    ("requested_lifetime", "1.5", "invalid_request"),
    ("requested_lifetime", "1e3", "invalid_request"),
    ("requested_lifetime", "9999999", "invalid_request"),
    ("requested_lifetime", " 60", "invalid_request"),
    ("requested_lifetime", "٣٠", "invalid_request"),  # Arabic-Indic digits
    ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token", "invalid_request"),
    ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2", "invalid_request"),
    ("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token", "invalid_request"),
    ("actor_token", "a.b.c", "invalid_request"),
    ("grant_type", "client_credentials", "unsupported_grant_type"),
    ("grant_type", "password", "unsupported_grant_type"),
    ("grant_type", "refresh_token", "unsupported_grant_type"),
    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE + " ", "unsupported_grant_type"),
    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE.upper(), "unsupported_grant_type"),
    ("grant_type", [GRANT_TYPE_TOKEN_EXCHANGE] * 2, "invalid_request"),
    ("scope", ["deploy:read", "deploy:write"], "invalid_request"),
    ("task_id", ["a", "b"], "invalid_request"),
]


def _case_id(case: tuple[str, Any, str]) -> str:
    name, value, _ = case
    text = value if isinstance(value, str) else "+".join(value)
    return f"{name}={text[:40]!r}"


@pytest.mark.parametrize("case", PARAMS, ids=[_case_id(c) for c in PARAMS])
def test_hostile_parameter_is_refused_and_burns_nothing(world: ObservedBroker, case) -> None:
    name, value, error = case
    token = world.token()
    form = world.form("token-exchange", token, **{name: value})
    world.refused(lambda rid: world.post_token(form, rid=rid), token=token, error=error)
    # The refusal did not burn the jti: the same token still works with a clean form.
    ok = world.exchange(token=token)
    assert ok.status_code == 200, ok.get_json()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("scope", "invalid_scope"),
        ("task_id", "invalid_request"),
        ("audience", "invalid_target"),
        ("purpose", None),
        ("grant_type", "unsupported_grant_type"),
    ],
)
def test_non_utf8_bytes_in_a_field_are_refused(
    world: ObservedBroker, name: str, error: str | None
) -> None:
    """Raw %FF %FE %C0%AF in a field: decoded with replacement characters, then refused by
    the field's own rule (or, for free-text purpose, accepted as text and JSON-escaped)."""
    token = world.token()
    fields = world.form("token-exchange", token)
    body = urlencode({k: v for k, v in fields.items() if k != name}) + f"&{name}=x%FF%FE%C0%AF"
    if error is None:
        resp = world.post_token(body, content_type="application/x-www-form-urlencoded")
        assert resp.status_code == 200, resp.get_json()
        for line in world.capture.audit_lines():
            json.loads(line)
        return
    world.refused(
        lambda rid: world.post_token(
            body, content_type="application/x-www-form-urlencoded", rid=rid
        ),
        token=token,
        error=error,
    )


def test_non_utf8_bytes_in_the_subject_token_are_refused(world: ObservedBroker) -> None:
    token = world.token()
    body = urlencode(world.form("token-exchange", "x")).replace(
        "subject_token=x", "subject_token=" + quote(token) + "%FF%C0%AF"
    )
    world.refused(
        lambda rid: world.post_token(
            body.encode(), content_type="application/x-www-form-urlencoded", rid=rid
        ),
        token=token + "\ufffd\ufffd\ufffd",
        error="invalid_request",
        token_hash=False,
    )


def test_raw_non_utf8_body_bytes_are_refused(world: ObservedBroker) -> None:
    body = b"grant_type=\xff\xfe&subject_token=\xc0\xaf.\xff.\xfe&subject_token_type=\x80"
    world.refused(
        lambda rid: world.post_token(
            body, content_type="application/x-www-form-urlencoded", rid=rid
        ),
        token=None,
        error=("invalid_request", "unsupported_grant_type"),
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/xml",
    ],
)
def test_other_content_types_are_refused(world: ObservedBroker, content_type: str) -> None:
    token = world.token()
    if content_type == "application/json":
        data: Any = json.dumps(world.form("token-exchange", token))
    elif content_type.endswith("utf-16"):
        data = urlencode(world.form("token-exchange", token)).encode("utf-16")
    else:
        data = urlencode(world.form("token-exchange", token))
    resp = world.post_token(data, content_type=content_type)
    assert 400 <= resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert "access_token" not in resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"


def test_body_over_64KiB_is_413_json_without_state(world: ObservedBroker) -> None:
    token = world.token()
    form = world.form("token-exchange", token, padding="p" * (70 * 1024))
    before = world.state_keys()
    resp = world.post_token(form)
    assert resp.status_code == 413
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert body["error"] == "invalid_request" and body["error_description"]
    assert world.state_keys() == before


def test_body_over_64KiB_is_audited(world: ObservedBroker) -> None:
    token = world.token()
    form = world.form("token-exchange", token, padding="p" * (70 * 1024))
    before = len(world.stream())
    resp = world.post_token(form)
    assert resp.status_code == 413
    assert len(world.stream()) == before + 1


def test_many_parameters_are_a_json_4xx(world: ObservedBroker) -> None:
    form = world.form("token-exchange", world.token())
    form.update({f"p{i}": "x" for i in range(2000)})
    resp = world.post_token(form)
    assert resp.status_code == 200 or 400 <= resp.status_code < 500
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"


def test_long_parameter_name_is_refused_with_a_short_description(world: ObservedBroker) -> None:
    token = world.token()
    form = world.form("token-exchange", token)
    form["n" * 5000] = ["a", "b"]
    refusal = world.refused(
        lambda rid: world.post_token(form, rid=rid), token=token, error="invalid_request"
    )
    assert len(refusal.body["error_description"]) < 120


@pytest.mark.parametrize("problem", ["repeated", "too_long"])
def test_parameter_names_are_not_echoed_raw(world: ObservedBroker, problem: str) -> None:
    token = world.token()
    form = world.form("token-exchange", token)
    name = 'x\r\n{"event":"fake"}\x1b[31m'
    form[name] = ["1", "2"] if problem == "repeated" else "v" * 17_000
    world.refused(lambda rid: world.post_token(form, rid=rid), token=token, error="invalid_request")


@pytest.mark.parametrize(
    "rid", ["../../x", 'a"b', "x" * 65, "abc def", "é", "a\tb", "{}", "${jndi:ldap://x}"]
)
def test_hostile_request_id_header_is_replaced(world: ObservedBroker, rid: str) -> None:
    try:
        resp = world.client.post(
            "/token",
            data=world.form("token-exchange", world.token(), scope="nope"),
            headers={"X-Request-Id": rid},
        )
    except ValueError:  # the test client itself refuses some header values
        pytest.skip("header value not sendable")
    assert resp.status_code == 400
    event = world.stream()[-1]
    assert event["request_id"] != rid
    assert len(event["request_id"]) <= 64


def test_log_injection_in_free_text_is_escaped(world: ObservedBroker) -> None:
    """purpose is free text: accepted, but the audit line stays one JSON object, and a forged
    event inside it is data, not a second event."""
    forged = '"}\u2028{"event":"token.exchange","outcome":"issued","jti":"forged"}'
    lines_before = len(world.capture.audit_lines())
    resp = world.exchange(purpose=forged)
    assert resp.status_code == 200, resp.get_json()
    lines = world.capture.audit_lines()[lines_before:]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0] and "\u2028" not in lines[0]
    event = json.loads(lines[0])
    assert event["purpose"] == forged
    assert not any(e.get("jti") == "forged" for e in world.stream())


# -- forgeries of Errand's own access tokens --------------------------------------------------


def _forgeries(world: ObservedBroker) -> dict[str, str]:
    real = world.exchange().get_json()["access_token"]
    claims = unverified_claims(real)
    ours = world.svc.keyring.active
    header = {"alg": ours.alg, "typ": "at+jwt", "kid": ours.kid}
    other = new_es256_key()
    return {
        "alg_none": es256_sign(ours, {**header, "alg": "none"}, claims).rsplit(".", 1)[0] + ".AA",
        "hs256_with_our_public_key": hs256_sign(
            public_pem(ours), {**header, "alg": "HS256"}, claims
        ),
        "signed_by_another_key_with_our_kid": es256_sign(other, header, claims),
        "our_kid_but_typ_jwt": es256_sign(ours, {**header, "typ": "JWT"}, claims),
        "task_id_tampered": ".".join(
            [
                real.split(".")[0],
                es256_sign(ours, header, {**claims, "task_id": "x"}).split(".")[1],
                real.split(".")[2],
            ]
        ),
        "expired_by_our_key": es256_sign(
            ours, header, {**claims, "exp": int(world.clock.now()) - 1}
        ),
        "jti_of_a_live_grant_other_sub": es256_sign(
            other, header, {**claims, "sub": "acme-release"}
        ),
        "subject_token_of_the_issuer": world.token(),
        "kid_traversal": es256_sign(ours, {**header, "kid": "../../" + ours.kid}, claims),
        "4KiB_plus": real + "A" * 5000,
    }


def test_forged_access_tokens_are_never_active(world: ObservedBroker) -> None:
    for name, forged in _forgeries(world).items():
        resp = world.introspect(forged)
        assert resp.status_code == 200, (name, resp.get_json())
        assert resp.get_json() == {"active": False}, name


def test_forged_access_tokens_cannot_complete_a_task_or_revoke(world: ObservedBroker) -> None:
    live = world.exchange(task_id="victim-task").get_json()["access_token"]
    claims = unverified_claims(live)
    ours = world.svc.keyring.active
    header = {"alg": ours.alg, "typ": "at+jwt", "kid": ours.kid}
    forged = [
        hs256_sign(public_pem(ours), {**header, "alg": "HS256"}, claims),
        es256_sign(new_es256_key(), header, claims),
    ]
    for token in forged:
        done = world.client.post("/tasks/complete", headers={"Authorization": f"Bearer {token}"})
        assert done.status_code == 401
        assert done.get_json()["error"] == "invalid_token"
        revoked = world.client.post("/revoke", data={"token": token})
        assert revoked.status_code == 200 and revoked.get_json() == {}
    assert world.introspect(live).get_json()["active"] is True


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic Zm9vOmJhcg==",
        "bearer a.b.c",
        "Bearer a.b.c d.e.f",
        "Bearer " + "A" * 9000,
        "Bearer \x7f",
    ],
)
def test_hostile_bearer_headers_at_task_completion(world: ObservedBroker, header: str) -> None:
    try:
        resp = world.client.post("/tasks/complete", headers={"Authorization": header})
    except ValueError:
        pytest.skip("header value not sendable")
    assert resp.status_code in (400, 401)
    assert resp.mimetype == "application/json"
    assert resp.get_json()["error"] in ("invalid_token", "invalid_request")


@pytest.mark.parametrize(
    "auth",
    [
        ("", ""),
        (CLIENT_ID, ""),
        (CLIENT_ID, CLIENT_SECRET + "x"),
        (CLIENT_ID + "\x00", CLIENT_SECRET),
        ("unknown", CLIENT_SECRET),
        ("a" * 10_000, "b"),
    ],
)
def test_introspection_client_auth_failures_are_401(world: ObservedBroker, auth) -> None:
    token = world.exchange().get_json()["access_token"]
    resp = world.client.post("/introspect", data={"token": token}, auth=auth)
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_client"
    assert "active" not in resp.get_json()


def test_jwt_bearer_assertion_cannot_be_replayed_as_a_subject_token(world: ObservedBroker) -> None:
    """The two grants share one replay guard: a jti used as an assertion is used."""
    token = world.token()
    first = world.exchange("jwt-bearer", token=token)
    assert first.status_code == 200, first.get_json()
    assert "issued_token_type" not in first.get_json()
    again = world.exchange("token-exchange", token=token)
    assert again.status_code == 400
    assert "already been used" in again.get_json()["error_description"]


def test_jwt_bearer_with_subject_token_type_parameters_is_still_checked(
    world: ObservedBroker,
) -> None:
    token = world.token()
    form = world.form("jwt-bearer", token, subject_token=token, task_id="../x")
    world.refused(lambda rid: world.post_token(form, rid=rid), token=token, error="invalid_request")


def test_credentials_in_the_url_are_refused_and_not_logged(world: ObservedBroker) -> None:
    token = world.token()
    resp = world.client.post(
        "/token?subject_token=" + quote(token), data=world.form("token-exchange", token)
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_request"
    for text in world.capture.texts():
        assert token not in text


def test_random_task_ids_share_nothing(world: ObservedBroker) -> None:
    """Two identities cannot meet in one task: a task id opened by one identity is refused
    to another (the key is the same string, so isolation is by ownership, not by name)."""
    task = "shared-" + secrets.token_hex(3)
    assert world.exchange(task_id=task).status_code == 200
    other = world.token(ref="refs/heads/release")
    refusal = world.refused(
        lambda rid: world.post_token(
            world.form("token-exchange", other, task_id=task, scope="release:write"), rid=rid
        ),
        token=other,
        error="invalid_request",
    )
    assert refusal.event["reason"] == "task_foreign"


def test_the_form_carries_only_what_the_schema_names(world: ObservedBroker) -> None:
    """Unknown parameters are ignored (RFC 6749 §3.2), including ones named like Errand's
    internal fields; they never reach the grant."""
    resp = world.exchange(
        identity="acme-release", owner="root", epoch="99", exp="9999999999", client_id="x"
    )
    assert resp.status_code == 200
    claims = unverified_claims(resp.get_json()["access_token"])
    assert claims["sub"] == "acme-deploy" and claims["owner"] == "platform-team"
    assert claims["exp"] - claims["iat"] <= 600


def test_token_type_hint_does_not_change_the_answer(world: ObservedBroker) -> None:
    token = world.exchange().get_json()["access_token"]
    for hint in ("refresh_token", "access_token", "x" * 64, "\u0000"):
        resp = world.client.post(
            "/introspect",
            data={"token": token, "token_type_hint": hint},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert resp.status_code in (200, 400)
        if resp.status_code == 200:
            assert resp.get_json()["active"] is True


def test_subject_token_type_id_token_goes_through_the_same_checks(world: ObservedBroker) -> None:
    token = world.token(aud="another-client")
    form = world.form(
        "token-exchange",
        token,
        subject_token_type="urn:ietf:params:oauth:token-type:id_token",
    )
    world.refused(
        lambda rid: world.post_token(form, rid=rid),
        token=token,
        error="invalid_request",
        prefix="subject_token:",
    )
    assert TOKEN_TYPE_JWT  # the default type is covered by the token matrix


def test_many_denials_leave_no_per_identity_state(world: ObservedBroker) -> None:
    """Invariant 1: denials claiming a victim's identity write no counter, replay or index
    keyed by that claim (an attacker cannot burn a victim's jti or lock it out)."""
    victim_jti = "victim-" + secrets.token_hex(4)
    before = world.state_keys()
    for _ in range(20):
        forged = es256_sign(new_es256_key(), world.header(), world.claims(jti=victim_jti))
        assert world.exchange(token=forged).status_code == 400
    assert world.state_keys() == before
    assert world.exchange(token=world.token(jti=victim_jti)).status_code == 200


def test_repeated_audiences_are_deduplicated(world: ObservedBroker) -> None:
    """300 copies of an allowed audience: one audience in the token, which stays small and
    introspects active (no way to inflate a token by repetition)."""
    resp = world.exchange(audience=[DEPLOY_AUD] * 300)
    assert resp.status_code == 200, resp.get_json()
    token = resp.get_json()["access_token"]
    assert unverified_claims(token)["aud"] == DEPLOY_AUD
    assert world.introspect(token).get_json()["active"] is True


LONG_AUDIENCES = [f"https://api{i}.example/" + "p" * 480 for i in range(8)]


def test_every_token_the_broker_issues_is_one_it_accepts(make_world) -> None:
    def long_allowance(raw: dict[str, Any]) -> None:
        raw["identities"][0]["allow"]["audiences"] += LONG_AUDIENCES

    world = make_world(long_allowance)
    resp = world.exchange(audience=LONG_AUDIENCES)
    if resp.status_code != 200:  # refusing such a request is a fix too
        assert resp.status_code == 400
        return
    token = resp.get_json()["access_token"]
    jti = unverified_claims(token)["jti"]
    observe(case="8 allowed audiences of ~500 chars", token_bytes=len(token))
    assert world.introspect(token).get_json()["active"] is True
    world.client.post("/revoke", data={"token": token})
    assert not world.redis.exists(K.grant(jti)), "revocation left the grant live"
