"""Fixtures of the hardening suites (docs/security.md).

`world` is the broker app on fakeredis, driven through Flask's test client, with every
audit event and log record captured so a test can assert *exactly one* audit event per
denial, carrying the token's SHA-256 and never the token. Everything runs on 127.0.0.1;
slow suites start their own redis-server (never the one on 6379)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.clock import FixedClock
from broker.devissuer import github_claims
from broker.domain.models import GRANT_TYPE_JWT_BEARER, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from broker.store import keys
from tests.conftest import UNIT_ISSUER
from tests.fixtures.builders import (
    ADMIN_TOKEN,
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    DEPLOY_AUD,
    StaticFetcher,
    fake_services,
    make_config,
    make_key_dir,
)
from tests.security.support import (
    CountingListener,
    assert_no_leak,
    es256,
    set_limits,
    sha256_hex,
)

NOW = 1_800_000_000.0

# Values the configuration's rules expect: a denial's description must never reveal them.
# RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (printable ASCII without
# '"' and '\\').
RFC6749_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

RULE_VALUES = ("100200300", "4242", "refs/heads/main", "refs/heads/release")

# Keys a refused request may create: the audit stream, the configured issuer's JWKS mirror
# and refresh lock (fetching the *configured* JWKS is allowed, at a bounded rate), and rate
# counters keyed by the client address or a configured issuer (issue 5: limit by the
# claimed issuer before the signature check). Counters keyed by an identity are checked
# separately: only a *verified* identity may be counted, never a claimed one.
ALLOWED_NEW_KEYS = (keys.AUDIT_STREAM, keys.PREFIX + "jwks:", keys.PREFIX + "lock:jwks:")
RATE_PREFIX = keys.PREFIX + "rl:"
ANONYMOUS_COUNTERS = (RATE_PREFIX + "addr:", RATE_PREFIX + "issuer:")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Attached to the root and to 'errand.audit': a propagated record arrives twice.
        if not any(r is record for r in self.records[-4:]):
            self.records.append(record)

    def texts(self) -> list[str]:
        return [f"{r.getMessage()} {r.__dict__!r}" for r in self.records]

    def audit_lines(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.name == "errand.audit"]


@dataclass
class Refusal:
    status: int
    body: dict[str, Any]
    event: dict[str, Any]
    headers: dict[str, str]


@dataclass
class World:
    """The broker on fakeredis behind Flask's test client, plus what it wrote and logged."""

    svc: Any
    app: Any
    client: Any
    key: Any  # the trusted issuer's signing key
    fetcher: StaticFetcher
    clock: FixedClock
    capture: _Capture
    listener: CountingListener
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # -- tokens --------------------------------------------------------------------------------
    def claims(self, **overrides: Any) -> dict[str, Any]:
        c = github_claims(issuer=UNIT_ISSUER, audience=AUDIENCE, now=self.clock.now())
        c.update(overrides)
        return {k: v for k, v in c.items() if v is not _DROP}

    def header(self, **extra: Any) -> dict[str, Any]:
        h = {"alg": "ES256", "typ": "JWT", "kid": self.key.kid, **extra}
        return {k: v for k, v in h.items() if v is not _DROP}

    def token(self, header: Any = None, **claims: Any) -> str:
        return es256(
            self.key, header if header is not None else self.header(), self.claims(**claims)
        )

    # -- Redis ---------------------------------------------------------------------------------
    @property
    def redis(self) -> Any:
        return self.svc.extras["redis"]

    def state_keys(self) -> set[str]:
        """Every key but the audit stream, the JWKS mirror and anonymous rate counters."""
        return {
            k
            for k in self.redis.scan_iter("*")
            if not k.startswith(ALLOWED_NEW_KEYS) and not k.startswith(ANONYMOUS_COUNTERS)
        }

    def grant_state(self) -> set[str]:
        """Keys that make or index a token: state_keys() without any rate counter."""
        return {k for k in self.state_keys() if not k.startswith(RATE_PREFIX)}

    def identity_counters(self) -> dict[str, str | None]:
        """Rate and denial counters keyed by an identity, with their values."""
        names = [
            k
            for k in self.redis.scan_iter(RATE_PREFIX + "*")
            if not k.startswith(ANONYMOUS_COUNTERS)
        ]
        return {k: self.redis.get(k) for k in names}

    def stream(self) -> list[dict[str, Any]]:
        return [json.loads(f["e"]) for _id, f in self.redis.xrange(keys.AUDIT_STREAM)]

    # -- HTTP ----------------------------------------------------------------------------------
    def form(self, grant: str, token: str | None, **extra: Any) -> dict[str, Any]:
        form: dict[str, Any] = {"audience": DEPLOY_AUD, "scope": "deploy:write"}
        if grant == "jwt-bearer":
            form.update(grant_type=GRANT_TYPE_JWT_BEARER, assertion=token)
        else:
            form.update(
                grant_type=GRANT_TYPE_TOKEN_EXCHANGE,
                subject_token=token,
                subject_token_type=TOKEN_TYPE_JWT,
            )
        form.update(extra)
        return {k: v for k, v in form.items() if v is not None}

    def post_token(self, data: Any, *, content_type: str | None = None, rid: str = "") -> Any:
        kwargs: dict[str, Any] = {"headers": {"X-Request-Id": rid or self.request_id()}}
        if content_type:
            kwargs["content_type"] = content_type
        return self.client.post("/token", data=data, **kwargs)

    def request_id(self) -> str:
        return f"sec-{next(self._ids)}-{secrets.token_hex(3)}"

    def exchange(
        self, grant: str = "token-exchange", token: str | None = None, **extra: Any
    ) -> Any:
        return self.post_token(self.form(grant, token or self.token(), **extra))

    def introspect(self, token: str) -> Any:
        return self.client.post(
            "/introspect", data={"token": token}, auth=(CLIENT_ID, CLIENT_SECRET)
        )

    # -- the invariant every refusal must satisfy ----------------------------------------------
    def refused(
        self,
        send: Callable[[str], Any],
        *,
        token: str | None,
        status: int | tuple[int, ...] = 400,
        error: str | tuple[str, ...] | None = None,
        prefix: str | None = None,
        token_hash: bool = True,
    ) -> Refusal:
        """Send a request that must be refused, and check SECURITY.md's rules for it:

        4xx JSON {error, error_description}, Cache-Control: no-store, no access_token, no
        stack trace; no grant, index, replay or counter key written; exactly one audit event
        (tied to this request by its X-Request-Id) carrying the token's SHA-256; the token
        itself in no audit event, log record or response."""
        state_before = self.state_keys()
        counters_before = self.identity_counters()
        stream_before = len(self.stream())
        lines_before = len(self.capture.audit_lines())
        rid = self.request_id()
        resp = send(rid)
        text = resp.get_data(as_text=True)
        statuses = status if isinstance(status, tuple) else (status,)
        assert resp.status_code in statuses, (resp.status_code, text)
        assert 400 <= resp.status_code < 500
        assert resp.mimetype == "application/json", text
        assert resp.headers.get("Cache-Control") == "no-store"
        assert "Traceback" not in text and "<html" not in text.lower()
        body = resp.get_json()
        assert isinstance(body, dict) and "access_token" not in body
        assert isinstance(body.get("error"), str) and body["error"]
        assert isinstance(body.get("error_description"), str) and body["error_description"]
        if error is not None:
            errors = error if isinstance(error, tuple) else (error,)
            assert body["error"] in errors, body
        description = body["error_description"]
        if prefix is not None:
            assert description.startswith(prefix), body
        assert len(description) < 300
        assert RFC6749_DESCRIPTION.fullmatch(description), f"not RFC 6749 §5.2: {description!r}"
        for value in RULE_VALUES:
            assert value not in description, f"the description reveals a rule value: {body}"

        new_events = self.stream()[stream_before:]
        assert len(new_events) == 1, new_events
        event = new_events[0]
        # No grant, index, replay entry or lifecycle record; identity counters only for the
        # identity the token was verified as (never for one it merely claimed).
        verified = event.get("identity")
        own = {f"{RATE_PREFIX}identity:{verified}", f"{RATE_PREFIX}denials:{verified}"}
        after = self.state_keys()
        assert {k for k in after ^ state_before if k not in own} == set(), (
            "a refused request wrote state",
            after ^ state_before,
        )
        counters_after = self.identity_counters()
        changed = {
            k
            for k in counters_after.keys() | counters_before.keys()
            if counters_after.get(k) != counters_before.get(k)
        }
        assert changed <= own, ("an identity counter moved for a claimed identity", changed)
        assert event.get("request_id") == rid, event
        assert event.get("outcome") == "denied", event
        assert event.get("reason"), event
        assert event.get("error") == body["error"], event
        new_lines = self.capture.audit_lines()[lines_before:]
        assert len(new_lines) == 1, new_lines
        assert "\n" not in new_lines[0] and "\r" not in new_lines[0]
        assert json.loads(new_lines[0])["request_id"] == rid
        if token:
            if token_hash:
                assert event.get("token_sha256") == sha256_hex(token), event
            else:
                assert isinstance(event.get("token_sha256"), str), event
            assert_no_leak(
                token,
                [json.dumps(e) for e in self.stream()] + self.capture.texts() + [text],
            )
        observe(
            status=resp.status_code,
            error=body["error"],
            reason=event.get("reason"),
            description=description,
        )
        return Refusal(resp.status_code, body, event, dict(resp.headers))


def observe(**fields: Any) -> None:
    """With ERRAND_SECURITY_REPORT=<file>, append what a test observed (one JSON line) so
    docs/security.md can quote actual runs."""
    path = os.environ.get("ERRAND_SECURITY_REPORT")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, **fields}, default=str) + "\n")


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


_DROP: Any = _Drop()
DROP = _DROP  # use as a claim or header value to leave it out


def build_world(
    tmp_path: Path,
    issuer_key: Any,
    listener: CountingListener,
    mutate: Any = None,
    limits: dict[str, Any] | None = None,
    **broker: Any,
) -> World:
    """limits: None turns every abuse limit off (suites that send hundreds of requests from
    one address on purpose); the rate-limit suite passes its own."""
    from broker.app import create_app
    from broker.settings import Settings

    def configure(raw: dict[str, Any]) -> None:
        set_limits(raw["broker"], limits)
        if mutate:
            mutate(raw)

    config = make_config(UNIT_ISSUER, configure, **broker)
    fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
    clock = FixedClock(NOW)
    svc = fake_services(config, make_key_dir(tmp_path), clock=clock, fetcher=fetcher)
    admin = tmp_path / f"admin-{secrets.token_hex(3)}"
    admin.write_text(ADMIN_TOKEN)
    settings = Settings(
        config_path=Path("unused.yaml"),
        redis_url="redis://fake",
        signing_key_dir=Path("unused"),
        admin_token_file=admin,
    )
    app = create_app(settings, services=svc)
    capture = _Capture()
    return World(
        svc=svc,
        app=app,
        client=app.test_client(),
        key=issuer_key,
        fetcher=fetcher,
        clock=clock,
        capture=capture,
        listener=listener,
    )


@pytest.fixture(scope="session")
def listener() -> Iterator[CountingListener]:
    server = CountingListener().start()
    yield server
    server.stop()


@pytest.fixture
def capture_logs() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    audit = logging.getLogger("errand.audit")
    levels = (root.level, audit.level)
    root.addHandler(handler)
    audit.addHandler(handler)
    root.setLevel(logging.DEBUG)
    audit.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    audit.removeHandler(handler)
    root.setLevel(levels[0])
    audit.setLevel(levels[1])


@pytest.fixture
def make_world(
    tmp_path: Path, issuer_key: Any, listener: CountingListener, capture_logs: _Capture
) -> Callable[..., World]:
    def make(mutate: Any = None, limits: dict[str, Any] | None = None, **broker: Any) -> World:
        world = build_world(tmp_path, issuer_key, listener, mutate, limits, **broker)
        world.capture = capture_logs
        return world

    return make


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment may carry a request off the machine."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# -- real processes --------------------------------------------------------------------------

# Databases of the session's private redis-server (tests/conftest.py) used by this suite's
# stacks (12-15: the integration suite flushes db 0 and the e2e suites use 1 to 7).
HOSTILE_DB = 12
ISSUER_DB = 13
LIMITS_DB = 14
COLD_FLEET_DB = 15


def private_db_url(redis_server: Any, db: int) -> str:
    import redis as redis_lib

    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    client = redis_lib.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url
