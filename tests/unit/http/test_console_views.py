"""The web console over the Flask test client, on fakeredis and the test's clock: sign-in,
timeouts, sign-out, CSRF refusals (audited), revoke-all's typed confirmation, and that no
token ever reaches a page. The real browser story is tests/e2e/test_console_browser.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from broker.app import create_app
from broker.http.console.events import event_rows
from broker.settings import Settings, SettingsError, load_settings
from tests.support.builders import ADMIN_TOKEN, BROKER_ISSUER, UNIT_ISSUER, make_config
from tests.support.policy import PAY, with_policy

ORIGIN = {"Origin": BROKER_ISSUER}


def _token_in(page: bytes) -> str:
    found = re.search(rb'name="csrf_token" value="([^"]*)"', page)
    assert found, page.decode()
    return found.group(1).decode()


def sign_in(client, approver: str = "") -> str:
    """Sign in (naming an approver identity, if any); the session's CSRF token."""
    login = client.get("/console/login")
    resp = client.post(
        "/console/login",
        data={"csrf_token": _token_in(login.data), "credential": ADMIN_TOKEN, "approver": approver},
        headers=ORIGIN,
    )
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/"
    cookie = resp.headers.getlist("Set-Cookie")[0]
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/console"):
        assert attribute in cookie  # the issuer is https: Secure
    return _token_in(client.get("/console/").data)


def audit_of(svc, event: str) -> list[dict]:
    return [e for e in svc.store.audit_events(task_id=None, limit=200) if e["event"] == event]


def test_pages_behind_sign_in_with_security_headers(client):
    resp = client.get("/console/grants")
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/login"
    sign_in(client)
    for path in (
        "/console/",
        "/console/grants",
        "/console/identities",
        "/console/revoke-all",
        "/console/approvals",
        "/console/tasks/t-1",
        "/console/grants?type=service&q=deploy&page=2",
    ):
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.data)
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/console/nowhere").headers["Cache-Control"] == "no-store"
    assert client.get("/console/grants?task=<script>").status_code == 400


def test_wrong_credential_is_refused_and_audited(client, svc):
    login = client.get("/console/login")
    resp = client.post(
        "/console/login",
        data={"csrf_token": _token_in(login.data), "credential": "wrong" * 6},
        headers=ORIGIN,
    )
    assert resp.status_code == 401 and b"not the admin credential" in resp.data
    assert not any("errand_console=" in c for c in resp.headers.getlist("Set-Cookie"))
    [failed] = audit_of(svc, "auth.failed")
    assert failed["via"] == "console" and failed["reason"] == "bad_admin_token"


def test_login_needs_its_own_form_token_and_origin(client, svc):
    client.get("/console/login")
    no_token = client.post("/console/login", data={"credential": ADMIN_TOKEN}, headers=ORIGIN)
    assert no_token.status_code == 403
    elsewhere = client.post(
        "/console/login",
        data={
            "csrf_token": _token_in(client.get("/console/login").data),
            "credential": ADMIN_TOKEN,
        },
        headers={"Origin": "https://attacker.example"},
    )
    assert elsewhere.status_code == 403
    assert [e["reason"] for e in audit_of(svc, "console.refused")] == ["csrf_origin", "csrf_token"]


def test_idle_and_absolute_timeouts(client, clock):
    sign_in(client)
    clock.advance(899)
    assert client.get("/console/grants").status_code == 200  # and this use resets the idle clock
    clock.advance(899)
    assert client.get("/console/grants").status_code == 200
    clock.advance(901)
    assert client.get("/console/grants").status_code == 303  # idle
    sign_in(client)
    for _ in range(32):  # busy all day, never idle for long
        clock.advance(890)
        assert client.get("/console/").status_code == 200
    clock.advance(890)
    assert client.get("/console/").status_code == 303  # past 8 hours since sign-in


def test_logout_ends_the_session_for_every_copy_of_the_cookie(client, app):
    csrf = sign_in(client)
    copy = app.test_client()
    cookie = client.get_cookie("errand_console", path="/console")
    copy.set_cookie("errand_console", cookie.value, path="/console")
    assert copy.get("/console/grants").status_code == 200
    resp = client.post("/console/logout", data={"csrf_token": csrf}, headers=ORIGIN)
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/login"
    assert copy.get("/console/grants").status_code == 303


def test_forged_posts_are_refused_audited_and_change_nothing(client, svc, issued):
    csrf = sign_in(client)
    issued(task_id="t-forged")
    target = "/console/tasks/t-forged/revoke"
    attempts = [
        ({"reason": "x"}, ORIGIN),  # no token
        (
            {"reason": "x", "csrf_token": csrf[:-1] + ("B" if csrf.endswith("A") else "A")},
            ORIGIN,
        ),  # a wrong one
        ({"reason": "x", "csrf_token": csrf}, {"Origin": "https://attacker.example"}),
        ({"reason": "x", "csrf_token": csrf}, {"Origin": "null"}),
        ({"reason": "x", "csrf_token": csrf}, {}),  # neither Origin nor Referer
    ]
    for form, headers in attempts:
        assert client.post(target, data=form, headers=headers).status_code == 403
    assert (
        len(
            svc.store.list_grants(
                now=int(svc.clock.now()), task_id="t-forged", identity_ids=None, limit=10
            )
        )
        == 1
    )
    reasons = sorted(e["reason"] for e in audit_of(svc, "console.refused"))
    assert reasons == ["csrf_origin"] * 3 + ["csrf_token"] * 2
    ok = client.post(
        target,
        data={"reason": "done", "csrf_token": csrf},
        headers={"Referer": BROKER_ISSUER + "/console/tasks/t-forged"},
    )
    assert ok.status_code == 303 and "revoked=1" in ok.headers["Location"]


def test_no_token_reaches_a_page(client, issued):
    csrf = sign_in(client)
    body = issued(task_id="t-secret")
    pages = [
        client.get(p).data
        for p in (
            "/console/grants",
            "/console/tasks/t-secret",
            "/console/grants?q=t-secret",
            "/console/identities",
        )
    ]
    assert all(body["access_token"].encode() not in page for page in pages)
    assert all(ADMIN_TOKEN.encode() not in page for page in pages)
    assert b"t-secret" in pages[0]
    client.post("/console/logout", data={"csrf_token": csrf}, headers=ORIGIN)


def test_revoke_all_needs_the_word_shown_and_a_reason(client, svc, issued):
    csrf = sign_in(client)
    issued(task_id="t-all")
    [jti] = [
        g.jti
        for g in svc.store.list_grants(
            now=int(svc.clock.now()), task_id="t-all", identity_ids=None, limit=5
        )
    ]
    form = client.get("/console/revoke-all").data
    word = re.search(rb'name="word" value="([^"]+)"', form).group(1).decode()
    epoch = svc.store.current_epoch()
    for bad in (
        {"confirm": word + "x", "reason": "incident"},
        {"confirm": word, "reason": ""},
        {"confirm": "", "reason": "incident"},
    ):
        resp = client.post(
            "/console/revoke-all", data={"csrf_token": csrf, "word": word, **bad}, headers=ORIGIN
        )
        assert resp.status_code == 400
    assert svc.store.current_epoch() == epoch
    resp = client.post(
        "/console/revoke-all",
        headers=ORIGIN,
        data={"csrf_token": csrf, "word": word, "confirm": word, "reason": "incident"},
    )
    assert resp.status_code == 303
    assert resp.headers["Location"] == f"/console/revoke-all/{epoch + 1}?revoked=1"
    assert svc.store.current_epoch() == epoch + 1
    status = client.get(resp.headers["Location"])
    assert status.status_code == 200 and b"Cut made: 1 live grant ended" in status.data
    assert svc.store.grant_state(jti, "t-all").grant.epoch < svc.store.current_epoch()
    [cut] = audit_of(svc, "revoke.all")
    assert cut["actor"].startswith("console:") and cut["reason"] == "incident"


def test_events_render_generic_fields_but_no_secret_looking_ones():
    [row] = event_rows(
        [
            {
                "ts": 1_800_000_000,
                "event": "task.delegated",
                "outcome": "allowed",
                "hop": 2,
                "actor_identity": "agent-b",
                "subject_token": "eyJ...",
                "token_sha256": "ab12",
                "client_secret": "s",
                "task": "t",
            }
        ]
    )
    assert row["ts"] == "2027-01-15T08:00:00+00:00" and row["event"] == "task.delegated"
    shown = dict(row["details"])
    assert shown == {"actor_identity": "agent-b", "hop": "2", "task": "t", "token_sha256": "ab12"}


def test_the_console_can_be_off(svc, tmp_path: Path):
    admin = tmp_path / "admin"
    admin.write_text(ADMIN_TOKEN)
    base = {
        "config_path": Path("x.yaml"),
        "redis_url": "redis://fake",
        "signing_key_dir": Path("k"),
    }
    off = create_app(Settings(**base, admin_token_file=admin, console=False), services=svc)
    assert off.test_client().get("/console/login").status_code == 404
    no_admin = create_app(Settings(**base), services=svc)
    assert no_admin.test_client().get("/console/login").status_code == 404


def test_console_settings():
    env = {"ERRAND_CONFIG": "x.yaml", "REDIS_URL": "redis://r", "ERRAND_SIGNING_KEY_DIR": "k"}
    assert load_settings(env).console is False  # no admin credential: no console
    with_admin = {**env, "ERRAND_ADMIN_TOKEN_FILE": "/run/secrets/admin"}
    assert load_settings(with_admin).console is True
    assert load_settings({**with_admin, "ERRAND_CONSOLE": "off"}).console is False
    with pytest.raises(SettingsError, match="needs ERRAND_ADMIN_TOKEN_FILE"):
        load_settings({**env, "ERRAND_CONSOLE": "on"})
    with pytest.raises(SettingsError, match="'on' or 'off'"):
        load_settings({**with_admin, "ERRAND_CONSOLE": "yes"})
    with pytest.raises(SettingsError, match="IDLE"):
        load_settings({**with_admin, "ERRAND_CONSOLE_IDLE_SECONDS": "30"})


def test_the_task_page_shows_the_lifecycle_store(client, issued):
    sign_in(client)
    issued(task_id="t-life", task_label=["ci_job=77"])
    suspended = client.post(
        "/tasks/t-life/suspend", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert suspended.status_code == 200, suspended.get_json()
    page = client.get("/console/tasks/t-life").data.decode()
    assert '<strong id="state">suspended</strong>' in page  # not inferred from the events
    assert "ci_job=<code>77</code>" in page and 'id="lifecycle"' in page
    unknown = client.get("/console/tasks/t-never").data.decode()
    assert 'id="state-source"' in unknown and "no live grants" in unknown


class TestApprovals:
    """The approvals page, with the runtime policy on and alice an approver."""

    @pytest.fixture
    def config(self, tmp_path: Path):
        policies = tmp_path / "policies"
        shutil.copytree(Path(__file__).resolve().parents[3] / "config" / "policies", policies)
        return make_config(UNIT_ISSUER, with_policy(policies))

    @staticmethod
    def pending(exchange) -> str:
        resp = exchange(audience=PAY, scope="pay:refund", task_id="refund-9", purpose="refund")
        assert resp.get_json()["error"] == "authorization_pending"
        return str(resp.get_json()["approval_id"])

    def test_an_approver_session_approves_with_a_reason(self, client, svc, exchange, clock):
        approval_id = self.pending(exchange)
        csrf = sign_in(client, approver="alice")
        [login] = audit_of(svc, "console.login")
        assert login["approver"] == "alice"
        page = client.get("/console/approvals").data.decode()
        assert approval_id in page and 'id="approver">alice<' in page
        target = f"/console/approvals/{approval_id}/approve"
        assert client.post(target, data={"reason": "ok"}, headers=ORIGIN).status_code == 403
        no_reason = client.post(target, data={"csrf_token": csrf, "reason": ""}, headers=ORIGIN)
        assert no_reason.status_code == 400
        assert svc.approvals.get(approval_id).state == "pending"
        done = client.post(
            target,
            data={"csrf_token": csrf, "reason": "order checked", "approver": "mallory"},
            headers=ORIGIN,
        )
        assert done.status_code == 303 and done.headers["Location"].endswith("decided=approved")
        decided = svc.approvals.get(approval_id)
        assert (decided.state, decided.approver, decided.reason) == (
            "approved",
            "alice",  # the session's approver, never a form field
            "order checked",
        )
        [event] = audit_of(svc, "approval.approved")
        assert event["actor"].startswith("console:") and event["approver"] == "alice"
        assert approval_id not in client.get("/console/approvals").data.decode()
        clock.advance(10)
        polled = exchange(
            audience=PAY,
            scope="pay:refund",
            task_id="refund-9",
            purpose="refund",
            approval_id=approval_id,
        )
        assert polled.status_code == 200, polled.get_json()

    def test_without_an_approver_identity_nothing_is_decided(self, client, svc, exchange):
        approval_id = self.pending(exchange)
        login = client.get("/console/login")
        assert b'id="approver"' in login.data
        refused = client.post(
            "/console/login",
            data={
                "csrf_token": _token_in(login.data),
                "credential": ADMIN_TOKEN,
                "approver": "acme-deploy",
            },
            headers=ORIGIN,
        )
        assert refused.status_code == 400 and b"not an approver" in refused.data
        csrf = sign_in(client)
        page = client.get("/console/approvals").data.decode()
        assert 'id="no-approver"' in page and "/approve" not in page
        resp = client.post(
            f"/console/approvals/{approval_id}/deny",
            data={"csrf_token": csrf, "reason": "no"},
            headers=ORIGIN,
        )
        assert resp.status_code == 400
        assert svc.approvals.get(approval_id).state == "pending"


def test_urls_built_with_lazily_compiled_rules_are_werkzeug_s_own() -> None:
    """tests/support/lazy_routes.py: a URL built after the lazy compile equals the one an
    eagerly compiled rule builds."""
    from flask import Flask, url_for

    app = Flask("lazy")
    app.add_url_rule("/tasks/<task_id>/<action>", "move", lambda **_: "")
    with app.test_request_context():
        lazy = url_for("move", task_id="t 1", action="suspend", extra="x")
    rule = next(iter(app.url_map.iter_rules("move")))
    eager = rule._compile_builder(True).__get__(rule, None)(
        task_id="t 1", action="suspend", extra="x"
    )
    assert lazy == "/tasks/t%201/suspend?extra=x"
    assert eager[1] == "/tasks/t%201/suspend?extra=x"
