"""The broker on fakeredis behind Flask's test client, with what it wrote and logged in
view, and the rules every refusal must satisfy (docs/security.md): the hardening suites'
world, driven in process."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.clock import FixedClock
from broker.dev.issuer import github_claims
from broker.domain.audit_hmac import token_hmac
from broker.store import keys
from tests.support.builders import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    UNIT_ISSUER,
    StaticFetcher,
    fake_services,
    make_app,
    make_config,
    make_key_dir,
    set_limits,
)
from tests.support.forms import DEPLOY_REQUEST, bearer_form, exchange_form
from tests.support.jws import assert_not_leaked, es256_sign
from tests.support.logs import ListHandler
from tests.support.servers import CountingListener

NOW = 1_800_000_000.0

# Values the configuration's rules expect: a denial's description must never reveal them.
# RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (printable ASCII without
# '"' and '\\').
RFC6749_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

RULE_VALUES = ("100200300", "4242", "refs/heads/main", "refs/heads/release")

# Keys a refused request may create: the audit stream, the configured issuer's JWKS mirror
# and refresh lock (fetching the *configured* JWKS is allowed, at a bounded rate), and rate
# counters keyed by the client address or a configured issuer (limit by the
# claimed issuer before the signature check). Counters keyed by an identity are checked
# separately: only a *verified* identity may be counted, never a claimed one.
ALLOWED_NEW_KEYS = (keys.AUDIT_STREAM, keys.PREFIX + "{j.")  # JWKS mirror and its lock
RATE_PREFIX = keys.PREFIX + "rl:"
ANONYMOUS_COUNTERS = (RATE_PREFIX + "addr:", RATE_PREFIX + "issuer:")


@dataclass
class Refusal:
    status: int
    body: dict[str, Any]
    event: dict[str, Any]
    headers: dict[str, str]


@dataclass
class ObservedBroker:
    """The broker on fakeredis behind Flask's test client, plus what it wrote and logged."""

    svc: Any
    app: Any
    client: Any
    key: Any  # the trusted issuer's signing key
    fetcher: StaticFetcher
    clock: FixedClock
    capture: ListHandler
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
        return es256_sign(
            self.key, header if header is not None else self.header(), self.claims(**claims)
        )

    # -- Redis ---------------------------------------------------------------------------------
    @property
    def redis(self) -> Any:
        return self.svc.redis

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
        fields = {**DEPLOY_REQUEST, **extra}
        if grant == "jwt-bearer":
            return bearer_form(token, **fields)
        return exchange_form(token, **fields)

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
        """Send a request that must be refused, and check docs/security-model.md's rules for it:

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
                assert event.get("token_hmac") == token_hmac(token), event
            else:
                assert isinstance(event.get("token_hmac"), str), event
            assert_not_leaked(
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
) -> ObservedBroker:
    """limits: None turns every abuse limit off (suites that send hundreds of requests from
    one address on purpose); the rate-limit suite passes its own."""

    def configure(raw: dict[str, Any]) -> None:
        set_limits(raw["broker"], limits)
        if mutate:
            mutate(raw)

    config = make_config(UNIT_ISSUER, configure, **broker)
    fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
    clock = FixedClock(NOW)
    svc = fake_services(config, make_key_dir(tmp_path), clock=clock, fetcher=fetcher)
    app = make_app(svc, tmp_path)
    # A worker has reported in (the clock is fixed): /readyz answers for the broker itself.
    svc.gauges.heartbeat("observed-worker", now=clock.now())
    capture = ListHandler()
    return ObservedBroker(
        svc=svc,
        app=app,
        client=app.test_client(),
        key=issuer_key,
        fetcher=fetcher,
        clock=clock,
        capture=capture,
        listener=listener,
    )
