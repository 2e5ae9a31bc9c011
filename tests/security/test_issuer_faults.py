"""Suite 3: issuer faults. A real HTTP issuer on 127.0.0.1 (FaultIssuer) whose JWKS endpoint
fails, hangs, answers slowly, returns garbage, an empty or a huge document, trickles, or
rotates its keys. The broker runs in process (Flask test client, fakeredis, the real
HttpJwksFetcher and the system clock) with small windows:

    fetch_timeout_seconds 0.3   refresh_cooldown_seconds 1
    jwks_max_age_seconds 1      jwks_stale_seconds 2

Expected (docs/configuration.md): a cold cache with a failing issuer is a retryable 503
temporarily_unavailable with Retry-After; a warm cache keeps serving its keys for
jwks_stale_seconds after the last good fetch, then the same 503; a new kid is picked up
after at most one cooldown, a removed kid is refused after at most max_age + cooldown;
unknown kids cause at most one JWKS fetch per cooldown, counted on the issuer's side."""

from __future__ import annotations

import itertools
import json
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.clock import SystemClock
from broker.dev.issuer import github_claims
from broker.store import keys
from tests.support.builders import (
    ADMIN_TOKEN,
    AUDIENCE,
    fake_services,
    make_config,
    make_key_dir,
    set_limits,
)
from tests.support.forms import deploy_form
from tests.support.forms import deploy_form as e2e_form
from tests.support.hostile import observe
from tests.support.jws import new_es256_key
from tests.support.redis import RedisDbs
from tests.support.servers import CountingListener, FaultIssuer
from tests.support.stack import AUDIENCE as E2E_AUDIENCE
from tests.support.stack import TunedStack

TIMEOUT = 0.3
COOLDOWN = 1
MAX_AGE = 1
STALE = 2


@dataclass
class IssuerWorld:
    issuer: FaultIssuer
    svc: Any
    client: Any

    def token(self, key: Any = None, **claims: Any) -> str:
        c = github_claims(issuer=self.issuer.issuer, audience=AUDIENCE, now=time.time())
        c.update(claims)
        return self.issuer.mint(c, key=key)

    def exchange(self, token: str | None = None) -> Any:
        return self.client.post("/token", data=deploy_form(token or self.token()))

    def state_keys(self) -> set[str]:
        r = self.svc.redis
        allowed = (keys.AUDIT_STREAM, keys.PREFIX + "{j.")  # the JWKS mirror and its lock
        return {k for k in r.scan_iter("*") if not k.startswith(allowed)}

    def last_event(self) -> dict[str, Any]:
        entries = self.svc.redis.xrevrange(keys.AUDIT_STREAM, count=1)
        return dict(json.loads(entries[0][1]["e"]))


def _tune(**overrides: Any) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        set_limits(raw["broker"])  # abuse limits off: this suite counts fetches, not requests
        raw["issuers"][0].update(
            fetch_timeout_seconds=TIMEOUT,
            refresh_cooldown_seconds=COOLDOWN,
            jwks_max_age_seconds=MAX_AGE,
            jwks_stale_seconds=STALE,
            **overrides,
        )

    return mutate


@pytest.fixture
def fault_issuer() -> Iterator[FaultIssuer]:
    server = FaultIssuer().start()
    yield server
    server.stop()


def build(issuer: FaultIssuer, tmp_path: Path, server: Any = None, **overrides: Any) -> IssuerWorld:
    """One web worker; workers built with the same fakeredis `server` share one Redis."""
    from broker.app import create_app
    from broker.settings import Settings

    config = make_config(issuer.issuer, _tune(**overrides))
    svc = fake_services(config, make_key_dir(tmp_path), clock=SystemClock(), server=server)  # type: ignore[arg-type]
    admin = tmp_path / "admin"
    admin.write_text(ADMIN_TOKEN)
    settings = Settings(
        config_path=Path("unused.yaml"),
        redis_url="redis://fake",
        signing_key_dir=Path("unused"),
        admin_token_file=admin,
    )
    return IssuerWorld(issuer, svc, create_app(settings, services=svc).test_client())


@pytest.fixture
def iw(fault_issuer: FaultIssuer, tmp_path: Path) -> IssuerWorld:
    return build(fault_issuer, tmp_path)


def assert_unavailable(w: IssuerWorld, resp: Any, state_before: set[str]) -> dict[str, Any]:
    assert resp.status_code == 503, resp.get_json()
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert int(resp.headers["Retry-After"]) > 0
    body = resp.get_json()
    assert body["error"] == "temporarily_unavailable"
    assert "key" in body["error_description"]  # a clear reason: the issuer's keys
    assert "access_token" not in body
    assert w.state_keys() == state_before
    event = w.last_event()
    assert event["outcome"] == "denied" and event["reason"] == "issuer_keys_unavailable"
    return dict(body)


# -- cold cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "garbage", "huge", "empty", "hang"])
def test_cold_cache_with_a_failing_jwks_is_a_quick_503(iw: IssuerWorld, mode: str) -> None:
    iw.issuer.mode = mode
    before = iw.state_keys()
    start = time.monotonic()
    resp = iw.exchange()
    elapsed = time.monotonic() - start
    body = assert_unavailable(iw, resp, before)
    assert elapsed < TIMEOUT * 2 + 1.0, f"{mode}: took {elapsed:.2f}s"
    observe(
        fault=f"cold {mode}",
        status=resp.status_code,
        error=body["error"],
        elapsed=round(elapsed, 3),
        jwks_requests=iw.issuer.jwks_requests,
    )


@pytest.mark.regression
@pytest.mark.parametrize("mode", ["error", "hang"])
def test_cold_cache_with_a_failing_jwks_every_other_worker_fails_fast(
    fault_issuer: FaultIssuer, tmp_path: Path, mode: str
) -> None:
    """Two workers on one Redis: the first fetches and fails (after the timeout when the
    issuer hangs); the other, which loses the refresh lock, answers 503 at once for the rest
    of the cooldown instead of waiting for a mirror that never comes."""
    import fakeredis

    server = fakeredis.FakeServer()
    first = build(fault_issuer, tmp_path / "a", server=server)
    other = build(fault_issuer, tmp_path / "b", server=server)
    fault_issuer.mode = mode
    fault_issuer.hang_seconds = TIMEOUT * 3
    before = other.state_keys()
    assert first.exchange().status_code == 503
    start = time.monotonic()
    for _ in range(3):
        assert_unavailable(other, other.exchange(), before)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT, f"{elapsed:.2f}s for three refusals"
    assert fault_issuer.jwks_requests == 1
    observe(fault=f"cold {mode}, second worker", elapsed=round(elapsed, 3))


def test_slow_jwks_within_the_timeout_is_fine(iw: IssuerWorld) -> None:
    iw.issuer.mode = "slow"
    iw.issuer.slow_seconds = TIMEOUT / 2
    resp = iw.exchange()
    assert resp.status_code == 200, resp.get_json()
    observe(fault="slow within timeout", status=200, jwks_requests=iw.issuer.jwks_requests)


def test_trickling_jwks_is_cut_off_at_the_fetch_timeout(iw: IssuerWorld) -> None:
    iw.issuer.mode = "trickle"
    iw.issuer.trickle_interval = TIMEOUT * 0.66  # each read succeeds just inside the timeout
    iw.issuer.trickle_seconds = 2.5
    start = time.monotonic()
    resp = iw.exchange()
    elapsed = time.monotonic() - start
    observe(fault="trickle", status=resp.status_code, elapsed=round(elapsed, 2))
    assert resp.status_code == 503
    assert elapsed < TIMEOUT * 2 + 1.0, f"the exchange waited {elapsed:.1f}s for a trickle"


def test_cold_cache_recovers_after_the_cooldown_without_a_restart(iw: IssuerWorld) -> None:
    iw.issuer.mode = "error"
    assert iw.exchange().status_code == 503
    iw.issuer.mode = "ok"
    # Within the cooldown the broker does not hammer the issuer: still 503, no new fetch.
    fetches = iw.issuer.jwks_requests
    assert iw.exchange().status_code == 503
    assert iw.issuer.jwks_requests == fetches
    time.sleep(COOLDOWN + 0.1)
    resp = iw.exchange()
    assert resp.status_code == 200, resp.get_json()


# -- warm cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "hang", "garbage"])
def test_warm_cache_serves_within_the_stale_window_then_denies(iw: IssuerWorld, mode: str) -> None:
    assert iw.exchange().status_code == 200
    warmed = time.monotonic()
    iw.issuer.mode = mode
    time.sleep(MAX_AGE + 0.1)  # the cached keys are due for a refresh, which fails
    served = [iw.exchange() for _ in range(5)]
    assert [r.status_code for r in served] == [200] * 5, [r.get_json() for r in served]
    # At most one refresh attempt per cooldown while serving stale keys.
    assert iw.issuer.jwks_requests <= 2
    time.sleep(max(0.0, warmed + STALE + 0.2 - time.monotonic()))
    time.sleep(COOLDOWN)  # let the refresh lock lapse: the denial comes from the fetch
    before = iw.state_keys()
    resp = iw.exchange()
    body = assert_unavailable(iw, resp, before)
    observe(
        fault=f"warm {mode}",
        within_stale=200,
        after_stale=resp.status_code,
        error=body["error"],
        jwks_requests=iw.issuer.jwks_requests,
    )


def test_keys_rotated_mid_flight(iw: IssuerWorld) -> None:
    old = iw.issuer.keys[0]
    new = new_es256_key()
    assert iw.exchange(iw.token(old)).status_code == 200  # fetch 1: [old]

    # A new kid appears. Within the cooldown of the last fetch it is unknown (and cached as
    # unknown); after the cooldown it is fetched and accepted.
    iw.issuer.keys = [old, new]
    first_try = iw.exchange(iw.token(new))
    assert first_try.status_code in (200, 400), first_try.get_json()
    if first_try.status_code == 400:
        assert iw.last_event()["reason"] == "unknown_key"
        time.sleep(COOLDOWN + 0.1)
    resp = iw.exchange(iw.token(new))
    assert resp.status_code == 200, resp.get_json()
    picked_up = iw.issuer.jwks_requests

    # The old kid is removed. Cached keys are fresh for max_age; after that the refresh
    # drops the old kid and its tokens are refused (400 unknown key, not 503).
    iw.issuer.keys = [new]
    time.sleep(MAX_AGE + COOLDOWN + 0.1)
    resp = iw.exchange(iw.token(old))
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"] == "invalid_request"
    assert iw.last_event()["reason"] == "unknown_key"
    assert iw.exchange(iw.token(new)).status_code == 200
    observe(
        fault="rotation",
        new_kid_first_try=first_try.status_code,
        fetches_to_pick_up=picked_up,
        old_kid_after_removal=400,
    )


def test_burst_of_random_kids_is_bounded_by_the_cooldown(iw: IssuerWorld) -> None:
    """Paced over ~3 cooldowns, so the bound is exercised (a burst shorter than one cooldown
    right after a fetch causes no fetch at all)."""
    assert iw.exchange().status_code == 200
    time.sleep(COOLDOWN + 0.05)  # the warm-up fetch's lock has lapsed
    baseline = iw.issuer.jwks_requests
    start = time.monotonic()
    statuses = []
    for _ in range(200):
        token = iw.issuer.mint(
            github_claims(issuer=iw.issuer.issuer, audience=AUDIENCE, now=time.time()),
            kid=secrets.token_urlsafe(12),
        )
        statuses.append(iw.exchange(token).status_code)
        time.sleep(0.015)
    elapsed = time.monotonic() - start
    fetches = iw.issuer.jwks_requests - baseline
    allowed = math.ceil(elapsed / COOLDOWN) + 1
    observe(
        fault="200 random kids (in process)",
        jwks_fetches=fetches,
        elapsed=round(elapsed, 2),
        allowed=allowed,
    )
    assert set(statuses) == {400}
    assert fetches <= allowed, (fetches, elapsed)


def test_jwks_redirect_is_not_followed(fault_issuer: FaultIssuer, tmp_path: Path) -> None:
    """A jwks_uri that redirects (to anywhere) is a failed fetch, never a followed one."""

    target = CountingListener().start()
    try:
        import http.server
        import threading

        class Redirect(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", target.url + "/jwks")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            w = build(
                fault_issuer, tmp_path, jwks_uri=f"http://127.0.0.1:{server.server_address[1]}/jwks"
            )
            resp = w.exchange()
            assert resp.status_code == 503
            assert target.hits == []
        finally:
            server.shutdown()
            server.server_close()
    finally:
        target.stop()


# -- the same over real processes: gunicorn (2 workers) + worker, shared Redis lock ------------

E2E_COOLDOWN = 1
E2E_MAX_AGE = 2
E2E_STALE = 4


@pytest.fixture(scope="module")
def issuer_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs
) -> Iterator[tuple[Any, FaultIssuer]]:
    issuer = FaultIssuer().start()
    stack = TunedStack(
        tmp_path_factory.mktemp("issuer-stack"),
        redis_dbs.url("security-issuer-faults"),
        issuer.issuer,
    )

    def tune(doc: dict[str, Any]) -> None:
        doc["issuers"][0].update(
            refresh_cooldown_seconds=E2E_COOLDOWN,
            jwks_max_age_seconds=E2E_MAX_AGE,
            jwks_stale_seconds=E2E_STALE,
            fetch_timeout_seconds=TIMEOUT,
        )

    stack.edit_config(tune)
    stack.start()
    try:
        yield stack, issuer
    finally:
        stack.stop()
        issuer.stop()


def _e2e_token(issuer: FaultIssuer, **headers: Any) -> str:
    claims = github_claims(issuer=issuer.issuer, audience=E2E_AUDIENCE, now=time.time())
    return issuer.mint(claims, **headers)


def _post(stack: Any, token: str, session: Any) -> Any:
    return session.post(stack.url + "/token", data=e2e_form(token), timeout=10)


@pytest.mark.e2e
def test_e2e_burst_of_random_kids_fetches_at_most_once_per_cooldown(issuer_stack) -> None:
    import concurrent.futures

    import requests

    stack, issuer = issuer_stack
    issuer.mode = "ok"
    http = requests.Session()
    http.trust_env = False
    for _ in range(4):  # warm both gunicorn workers
        assert _post(stack, _e2e_token(issuer), http).status_code == 200
    time.sleep(E2E_COOLDOWN + 0.05)  # the warm-up fetch's lock has lapsed
    baseline = issuer.jwks_requests
    first = len(issuer.jwks_times)

    def one(_: int) -> list[int]:
        # 4 client threads x 50 tokens, paced so the burst spans ~3-4 cooldowns.
        out = []
        with requests.Session() as s:
            s.trust_env = False
            for _ in range(50):
                token = _e2e_token(issuer, kid=secrets.token_urlsafe(12))
                out.append(int(_post(stack, token, s).status_code))
                time.sleep(0.06)
        return out

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = [code for batch in pool.map(one, range(4)) for code in batch]
    elapsed = time.monotonic() - start
    fetches = issuer.jwks_requests - baseline
    times = issuer.jwks_times[first:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    allowed = math.ceil(elapsed / E2E_COOLDOWN) + 1
    observe(
        fault="200 random kids (gunicorn x2, 4 client threads)",
        jwks_fetches=fetches,
        elapsed=round(elapsed, 2),
        allowed=allowed,
        gaps=[round(g, 2) for g in gaps],
    )
    assert set(statuses) == {400}, statuses
    assert fetches <= allowed, (fetches, elapsed)
    assert all(g >= E2E_COOLDOWN * 0.9 for g in gaps), gaps


@pytest.mark.e2e
def test_e2e_issuer_outage_stale_window_then_503_then_recovery(issuer_stack) -> None:
    import requests

    stack, issuer = issuer_stack
    http = requests.Session()
    http.trust_env = False
    issuer.mode = "ok"
    time.sleep(E2E_COOLDOWN + 0.1)
    # A kid nobody has seen forces a fresh fetch now, so the stale window starts here.
    issuer.keys = [*issuer.keys, new_es256_key()]
    warm = _post(stack, _e2e_token(issuer, key=issuer.keys[-1]), http)
    assert warm.status_code == 200, warm.text
    fetched = time.monotonic()
    issuer.mode = "error"
    time.sleep(E2E_MAX_AGE + 0.2)
    within = [_post(stack, _e2e_token(issuer, key=issuer.keys[-1]), http) for _ in range(6)]
    assert [r.status_code for r in within] == [200] * 6, [r.text for r in within]
    time.sleep(max(0.0, fetched + E2E_STALE + E2E_COOLDOWN + 0.2 - time.monotonic()))
    after = [_post(stack, _e2e_token(issuer, key=issuer.keys[-1]), http) for _ in range(4)]
    for resp in after:
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] == "temporarily_unavailable"
        assert resp.headers["Retry-After"]
        assert resp.headers["Cache-Control"] == "no-store"
    issuer.mode = "ok"
    recovered = False
    deadline = time.monotonic() + E2E_COOLDOWN * 3 + 2
    while time.monotonic() < deadline and not recovered:
        recovered = _post(stack, _e2e_token(issuer, key=issuer.keys[-1]), http).status_code == 200
        time.sleep(0.2)
    assert recovered, stack.logs()
    assert stack.alive("web")
    observe(fault="e2e issuer outage", within_stale=200, after_stale=503, recovered=True)


@pytest.mark.e2e
def test_cold_fleet_shares_the_first_fetch(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDbs
) -> None:
    """A fresh fleet (2 gunicorn workers) whose first JWKS fetch takes 1 s (within the
    timeout): concurrent first requests should wait for it or share it, not fail."""
    import concurrent.futures

    import requests

    issuer = FaultIssuer().start()
    issuer.mode = "slow"
    issuer.slow_seconds = 1.0
    stack = TunedStack(
        tmp_path_factory.mktemp("cold-fleet"),
        redis_dbs.url("security-cold-fleet"),
        issuer.issuer,
    )
    stack.edit_config(lambda doc: doc["issuers"][0].update(fetch_timeout_seconds=3.0))
    stack.start()
    try:

        def burst(_: int) -> list[int]:
            out = []
            with requests.Session() as s:
                s.trust_env = False
                deadline = time.monotonic() + 0.8
                while time.monotonic() < deadline and len(out) < 20:
                    out.append(int(_post(stack, _e2e_token(issuer), s).status_code))
            return out

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = [c for batch in pool.map(burst, range(4)) for c in batch]
        observe(
            fault="cold fleet, first fetch 1 s",
            statuses=dict((str(c), statuses.count(c)) for c in sorted(set(statuses))),
            jwks_requests=issuer.jwks_requests,
        )
        assert set(statuses) == {200}, statuses
    finally:
        stack.stop()
        issuer.stop()
