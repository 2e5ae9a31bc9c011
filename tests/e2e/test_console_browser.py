"""The web console in a real headless Chromium (Debian's `chromium`, driven by Playwright
with `executable_path`; `playwright install` is never run) against the session's gunicorn
broker and worker: sign in, find a task, revoke it, and the token introspects inactive;
forged posts (no token, a wrong token, another origin) are refused with 403 and audited; a
wrong credential is refused; sign-out ends the session for every copy of its cookie.

No skip: scripts/test.sh installs chromium with apt-get when it is missing, and without it
this module fails."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.support.stack import Stack, introspect, issue

pytestmark = pytest.mark.e2e

CHROMIUM_NAMES = ("chromium", "chromium-browser")
ATTACKER = "http://attacker.example"


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.fail("chromium is not installed: run scripts/test.sh, or apt-get install chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # 127.0.0.1 only, never through a proxy from the environment.
        launched = p.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-proxy-server"]
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    yield ctx
    ctx.close()


def sign_in(page: Page, stack: Stack, credential: str) -> Any:
    page.goto(stack.url + "/console/")
    assert page.url.endswith("/console/login")  # no session: sent to the sign-in form
    page.fill("#credential", credential)
    with page.expect_response(lambda r: r.url.endswith("/console/login")) as posted:
        page.click("#sign-in")
    return posted.value


def refusals(stack: Stack, http: Any) -> list[dict[str, Any]]:
    resp = http.get(
        stack.url + "/admin/audit?limit=200",
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return [e for e in resp.json()["events"] if e.get("event") == "console.refused"]


def test_console_story(stack, dev_issuer, http, context: BrowserContext):
    task_id = "console-story"
    token = issue(stack, dev_issuer, http, task_id=task_id)["access_token"]
    assert introspect(stack, token, http).json()["active"] is True
    page = context.new_page()

    # A wrong credential: refused, no session cookie.
    refused = sign_in(page, stack, "not-the-admin-credential-at-all")
    assert refused.status == 401
    assert "not the admin credential" in page.inner_text("#error")
    assert not [c for c in context.cookies() if c["name"] == "errand_console"]

    # The right one: a session cookie the page's scripts (there are none) could not read.
    page.fill("#credential", stack.admin_token)
    page.click("#sign-in")
    page.wait_for_url(stack.url + "/console/")
    cookie = next(c for c in context.cookies() if c["name"] == "errand_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert cookie["secure"] is False  # the broker is plain http on loopback (docs/console.md)

    # Find the task from the overview; its path and its live grant, never the token.
    page.fill("#task-search", task_id)
    response_holder: list[Any] = []
    page.on("response", lambda r: response_holder.append(r))
    page.click("#find-task")
    page.wait_for_url(f"{stack.url}/console/tasks/{task_id}")
    assert page.inner_text("#task-id") == task_id
    assert page.inner_text("#state").startswith("running")
    assert "token.exchange" in page.inner_text("#events")
    assert token not in page.content()
    headers = response_holder[-1].headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"

    # The grants page finds it by search.
    page.goto(f"{stack.url}/console/grants?q={task_id}")
    assert task_id in page.inner_text("#grants")

    # Revoke the task: the token is inactive at once.
    page.goto(f"{stack.url}/console/tasks/{task_id}")
    page.fill("#reason", "browser test")
    page.click("#revoke-task")
    page.wait_for_selector("#done")
    assert "Revoked 1 live grant" in page.inner_text("#done")
    assert introspect(stack, token, http).json() == {"active": False}
    assert "revoke.bulk" in page.inner_text("#events")

    # Forged posts with the session cookie: no token, a wrong token. 403, nothing revoked.
    second = issue(stack, dev_issuer, http, task_id=task_id + "-2")["access_token"]
    before = len(refusals(stack, http))
    target = f"{stack.url}/console/tasks/{task_id}-2/revoke"
    same_origin = {"Origin": stack.url}
    for form in ({"reason": "forged"}, {"reason": "forged", "csrf_token": "x" * 43}):
        forged = context.request.post(target, form=form, headers=same_origin, max_redirects=0)
        assert forged.status == 403, forged.text()
    # A page on another origin posting a form into the console, in the same browser.
    attacker = context.new_page()
    attacker.route(
        ATTACKER + "/",
        lambda route: route.fulfill(
            content_type="text/html",
            body=(
                f'<form method="post" action="{target}"><input name="reason" value="evil">'
                '<button id="go">go</button></form>'
            ),
        ),
    )
    attacker.goto(ATTACKER + "/")
    with attacker.expect_response(target) as cross:
        attacker.click("#go")
    assert cross.value.status == 403
    assert introspect(stack, second, http).json()["active"] is True
    reasons = [e["reason"] for e in refusals(stack, http)[: len(refusals(stack, http)) - before]]
    assert sorted(reasons) == ["csrf_origin", "csrf_token", "csrf_token"]

    # Sign out: the cookie copied before is worthless afterwards.
    copied = f"errand_console={cookie['value']}"
    page.click("#logout")
    page.wait_for_url(stack.url + "/console/login")
    after = http.get(
        stack.url + "/console/grants", headers={"Cookie": copied}, allow_redirects=False, timeout=10
    )
    assert after.status_code == 303 and after.headers["Location"].endswith("/console/login")
