"""How long does a revoked token stay accepted by a resource server using errand_rs?

Starts a real broker on 127.0.0.1 the way the e2e suite does (tests/e2e/stack.py: gunicorn +
RQ worker, signing keys sealed in its own Redis), its own redis-server on a free port (never
6379) and a dev issuer. Issues N tokens, then for each of R of them: waits a random fraction of
a poll interval (so revocations land at every phase of the poll), revokes it (POST /revoke, or
POST /tasks/complete with --kind complete) and measures how long an ErrandVerifier with a
background RevocationFeed keeps accepting it. Prints p50 / p90 / p99 / max.

With --rotation it also measures an emergency key rotation (`POST /admin/keys/rotate
{"emergency": true}`, what `errand keys rotate --emergency` sends) against a verifier with the
library's default JWKS settings that sees only old tokens: that takes up to the broker's JWKS
max-age (60 s) plus its key re-read interval (2 s).

Usage:
    .venv/bin/python scripts/bench_feed.py [--tokens 60] [--revocations 50] [--poll 0.5]
                                           [--kind revoke|complete] [--rotation] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.dev.embedded_redis import RedisProcess  # noqa: E402
from broker.dev.issuer import DevIssuer, load_or_create_key  # noqa: E402
from broker.tokens.keyrecord import new_kek  # noqa: E402
from errand_rs import ErrandVerifier, InvalidToken, RevocationFeed, TokenRevoked  # noqa: E402
from tests.support.stack import (  # noqa: E402
    CLIENT_ID,
    DEPLOY_AUD,
    LOCAL,
    Stack,
    mint,
    post_token,
)


class KekStack(Stack):
    """Signing keys in Redis, sealed with a KEK, so they can be rotated."""

    def env(self) -> dict[str, str]:
        env = super().env()
        kek = self.workdir / "kek"
        if not kek.exists():
            kek.write_text(new_kek())
            kek.chmod(0o600)
        env.pop("ERRAND_SIGNING_KEY_DIR", None)
        env["ERRAND_KEY_ENCRYPTION_KEY_FILE"] = str(kek)
        return env


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min_ms": round(min(values) * 1000, 1),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p90_ms": round(percentile(values, 90) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def issue(stack: Stack, issuer: DevIssuer, task_id: str) -> str:
    resp = post_token(stack, mint(issuer), task_id=task_id, scope="deploy:read")
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def time_until_revoked(
    verifier: ErrandVerifier, feed: RevocationFeed, token: str, timeout: float = 10.0
) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            verifier.verify(token, feed=feed)
        except TokenRevoked:
            return time.monotonic()
        time.sleep(0.001)
    raise RuntimeError(f"token still accepted {timeout} s after its revocation")


def bench_revocations(stack: Stack, issuer: DevIssuer, args: argparse.Namespace) -> dict[str, Any]:
    tasks = ["bench-" + secrets.token_hex(6) for _ in range(args.tokens)]
    tokens = [issue(stack, issuer, task) for task in tasks]
    verifier = ErrandVerifier(stack.url, DEPLOY_AUD)
    feed = RevocationFeed(
        stack.url, CLIENT_ID, stack.client_secret, poll_interval_seconds=args.poll
    ).start()
    if not feed.wait_synced(10):
        raise RuntimeError("the feed never synced")
    after_response: list[float] = []
    after_request: list[float] = []
    call_latency: list[float] = []
    try:
        for i in range(args.revocations):
            token = tokens[i]
            verifier.verify(token, feed=feed)  # accepted before
            time.sleep(random.uniform(0, args.poll))
            sent = time.monotonic()
            if args.kind == "revoke":
                resp = LOCAL.post(stack.url + "/revoke", data={"token": token}, timeout=10)
            else:
                resp = LOCAL.post(
                    stack.url + "/tasks/complete",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
            answered = time.monotonic()
            resp.raise_for_status()
            rejected = time_until_revoked(verifier, feed, token)
            after_response.append(max(0.0, rejected - answered))
            after_request.append(rejected - sent)
            call_latency.append(answered - sent)
        # Nothing else was revoked along the way.
        for token in tokens[args.revocations :]:
            verifier.verify(token, feed=feed)
    finally:
        feed.stop()
    return {
        "kind": "POST /revoke" if args.kind == "revoke" else "POST /tasks/complete",
        "poll_interval_seconds": args.poll,
        "from_revoke_response": summary(after_response),
        "from_revoke_request": summary(after_request),
        "revoke_call_latency": summary(call_latency),
    }


def bench_rotation(stack: Stack, issuer: DevIssuer) -> dict[str, Any]:
    """Library defaults (jwks_cache_seconds=300, capped by the broker's max-age=60)."""
    old = issue(stack, issuer, "bench-rot-" + secrets.token_hex(4))
    passive = ErrandVerifier(stack.url, DEPLOY_AUD)
    passive.verify(old)  # fetches the JWKS now
    active = ErrandVerifier(stack.url, DEPLOY_AUD)
    active.verify(old)
    time.sleep(10.5)  # past active's 10 s refetch cooldown, as in a long-running server
    resp = LOCAL.post(
        stack.url + "/admin/keys/rotate",
        json={"emergency": True},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=30,
    )
    resp.raise_for_status()
    rotated = time.monotonic()
    # The active verifier meets a token signed by the new key once every node signs with it.
    time.sleep(2.5)
    fresh = issue(stack, issuer, "bench-rot-" + secrets.token_hex(4))
    shown = time.monotonic()
    active.verify(fresh)  # unknown kid -> one refetch
    try:
        active.verify(old)
        raise RuntimeError("old token accepted after the refetch")
    except InvalidToken as err:
        assert err.reason == "unknown_kid", err.reason
    active_delay = time.monotonic() - shown
    while True:
        try:
            passive.verify(old)
        except InvalidToken as err:
            assert err.reason == "unknown_kid", err.reason
            break
        if time.monotonic() - rotated > 120:
            raise RuntimeError("old token still accepted 120 s after the rotation")
        time.sleep(0.05)
    return {
        "passive_old_tokens_only_s": round(time.monotonic() - rotated, 2),
        "after_first_new_kid_token_ms": round(active_delay * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.5, help="feed poll interval (s)")
    parser.add_argument("--kind", choices=["revoke", "complete"], default="revoke")
    parser.add_argument("--rotation", action="store_true", help="also time a key rotation")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.revocations > args.tokens:
        parser.error("--revocations must not exceed --tokens")

    with tempfile.TemporaryDirectory(prefix="errand-bench-feed-") as tmp:
        work = Path(tmp)
        redis_server = RedisProcess(work / "redis").start()
        issuer = DevIssuer(load_or_create_key(work / "issuer.pem")).start()
        stack: Stack | None = None
        try:
            stack = KekStack(work / "stack", redis_server.url, issuer.issuer).start()
            result = bench_revocations(stack, issuer, args)
            if args.rotation:
                result["emergency_rotation"] = bench_rotation(stack, issuer)
        finally:
            if stack is not None:
                stack.stop()
            issuer.stop()
            redis_server.stop()

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['kind']}: {args.revocations} revocations, feed poll "
        f"{args.poll:g} s, ErrandVerifier + RevocationFeed on 127.0.0.1"
    )
    for label in ("from_revoke_response", "from_revoke_request", "revoke_call_latency"):
        s = result[label]
        print(
            f"  {label:22s} p50 {s['p50_ms']:7.1f} ms  p90 {s['p90_ms']:7.1f} ms  "
            f"p99 {s['p99_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms  (min {s['min_ms']:.1f})"
        )
    if args.rotation:
        rot = result["emergency_rotation"]
        print(
            "  emergency rotation, library defaults: old tokens rejected "
            f"{rot['passive_old_tokens_only_s']} s after the rotation when only old tokens "
            f"arrive; {rot['after_first_new_kid_token_ms']} ms after the first new-kid token"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
