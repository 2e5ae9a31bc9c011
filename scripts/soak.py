#!/usr/bin/env python3
"""A bounded soak of the real stack, loopback only, then invariant checks.

Starts privately on 127.0.0.1 (never the Redis on 6379): redis-server on a free port, the
dev issuer, the broker under gunicorn (config/gunicorn.conf.py, 2 web workers) and
`python -m workers` (sweep every 1 s). Abuse limits are off: one client address sends
everything on purpose. For --seconds it runs, concurrently:

  exchangers    RFC 8693 exchanges with short lifetimes (--min-life..--max-life s), joining
                open tasks or opening new ones; now and then naming a completed task, which
                must be refused
  introspectors RFC 7662 introspection of random tokens issued so far
  completer     POST /tasks/complete with a live token of an open task, then introspects
                every known token of that task
  revoker       RFC 7009 revocation of random live tokens, then introspects each

and checks, during the run and after it:

  I1 no 5xx, ever (503 only while Redis is unreachable, which does not happen here)
  I2 every live grant in Redis has an audit trail: a token.exchange "issued" event with its
     jti in errand:audit (and every 200 exchange has one)
  I3 no revoked token, and no token of a completed task, is ever active after the revocation
     or completion was acknowledged; no exchange for a completed task is ever issued
  I4 every grant key carries a TTL
  I5 after expiry, grant and index keys return to the baseline; once the keys that expire by
     their own TTL on purpose (replay entries until the subject token's exp + skew, task
     tombstones) are gone too, the memory of Errand's keys is back near the baseline, and
     used_memory grew by no more than the bounded audit stream, the age-trimmed revocation
     feed and RQ's job records did (each reported separately)

Prints a summary table; exits 1 when an invariant fails, 2 on a setup error.

    .venv/bin/python scripts/soak.py                 # 120 s
    .venv/bin/python scripts/soak.py --seconds 60 --json"""

from __future__ import annotations

import argparse
import collections
import json
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from broker.dev.embedded_redis import RedisProcess  # noqa: E402
from broker.dev.issuer import DevIssuer, github_claims, load_or_create_key  # noqa: E402
from broker.domain.audit_hmac import jti_hmac  # noqa: E402
from broker.store import keys  # noqa: E402
from tests.support.audit import use_broker_audit_key  # noqa: E402
from tests.support.forms import deploy_form as exchange_form  # noqa: E402
from tests.support.stack import (  # noqa: E402
    AUDIENCE,
    CLIENT_ID,
    TunedStack,
)

MAX_OPS_PER_THREAD = 200_000  # a count bound on every loop, besides the clock
TOMBSTONE_SECONDS = 60  # broker.task_tombstone_seconds in the soak's configuration
CLEAN = ("grant", "task index", "identity index", "owner index", "expiry index", "completing")
KEY_TYPES = [  # (label, prefix or exact name); first match wins
    ("grant", keys.PREFIX + "grant:"),
    ("task index", keys.PREFIX + "task:"),
    ("task tombstone", keys.PREFIX + "task-done:"),
    ("identity index", keys.PREFIX + "ident:"),
    ("owner index", keys.PREFIX + "owner:"),
    ("expiry index", keys.EXPIRY_INDEX),
    ("completing", keys.COMPLETING),
    ("replay", keys.PREFIX + "replay:"),
    ("audit stream", keys.AUDIT_STREAM),
    ("revocation feed", keys.REVOCATION_FEED),
    ("rate counters", keys.PREFIX + "rl:"),
    ("rq", "rq:"),
]
# Keys that expire by their own TTL by design: replay entries (subject token exp + skew) and
# task tombstones (task_tombstone_seconds, 60 s here). The revocation feed is one stream the
# sweep trims by age (tombstone + skew + 60 s); it is reported on its own.
BY_TTL = ("task tombstone", "replay")


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # 127.0.0.1 only, never through a proxy
    return s


@dataclass
class Token:
    token: str
    jti: str
    task: str
    exp: int


@dataclass
class State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: list[Token] = field(default_factory=list)
    by_task: dict[str, list[Token]] = field(default_factory=lambda: collections.defaultdict(list))
    open_tasks: list[str] = field(default_factory=list)
    completed: dict[str, float] = field(default_factory=dict)  # task -> acknowledged at
    revoked: dict[str, float] = field(default_factory=dict)  # jti -> acknowledged at
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    violations: list[str] = field(default_factory=list)

    def record(self, op: str, status: int, seconds: float) -> None:
        with self.lock:
            self.counts[f"{op} {status}"] += 1
            if len(self.latency[op]) < 100_000:
                self.latency[op].append(seconds)
            if status >= 500 or status == 0:
                self.violations.append(f"I1: {op} answered {status}")

    def violate(self, text: str) -> None:
        with self.lock:
            if len(self.violations) < 1000:
                self.violations.append(text)


class Soak:
    def __init__(self, stack: TunedStack, issuer: DevIssuer, args: argparse.Namespace) -> None:
        self.stack = stack
        self.issuer = issuer
        self.args = args
        self.state = State()
        self.stop = threading.Event()

    # -- requests --------------------------------------------------------------------------
    def subject(self) -> str:
        claims = github_claims(
            issuer=self.issuer.issuer, audience=AUDIENCE, lifetime=self.args.subject_lifetime
        )
        return str(self.issuer.mint(claims))

    def timed(self, op: str, fn: Any) -> tuple[int, dict[str, Any]]:
        start = time.monotonic()
        try:
            resp = fn()
            status = resp.status_code
            try:
                body = resp.json()
            except ValueError:
                body = {"_raw": resp.text[:200]}
        except requests.RequestException as err:
            status, body = 0, {"_error": repr(err)}
        self.state.record(op, status, time.monotonic() - start)
        return status, body if isinstance(body, dict) else {}

    def introspect(self, http: requests.Session, token: str) -> tuple[int, dict[str, Any]]:
        return self.timed(
            "introspect",
            lambda: http.post(
                self.stack.url + "/introspect",
                data={"token": token},
                auth=(CLIENT_ID, self.stack.client_secret),
                timeout=10,
            ),
        )

    def must_be_inactive(self, http: requests.Session, tok: Token, why: str) -> None:
        status, body = self.introspect(http, tok.token)
        if status == 200 and body.get("active"):
            self.state.violate(f"I3: {why} token {tok.jti} (task {tok.task}) is active")

    # -- workers ----------------------------------------------------------------------------
    def exchanger(self, seed: int) -> None:
        rng = random.Random(seed)
        http = session()
        for n in range(MAX_OPS_PER_THREAD):
            if self.stop.is_set():
                return
            st = self.state
            with st.lock:
                # Completed tasks whose tombstone certainly still stands (it lasts
                # TOMBSTONE_SECONDS; after that the task id may be used again, by design).
                fresh = time.monotonic() - (TOMBSTONE_SECONDS - 5)
                completed = (
                    [t for t, at in st.completed.items() if at > fresh]
                    if rng.random() < 0.03
                    else []
                )
                if completed:
                    task, expect_refusal = rng.choice(completed), True
                elif st.open_tasks and rng.random() < 0.7:
                    task, expect_refusal = rng.choice(st.open_tasks), False
                else:
                    task, expect_refusal = f"soak-{seed}-{n}-{secrets.token_hex(2)}", False
            life = rng.randint(self.args.min_life, self.args.max_life)
            form = exchange_form(self.subject(), task_id=task, requested_lifetime=str(life))
            status, body = self.timed(
                "exchange",
                lambda f=form: http.post(self.stack.url + "/token", data=f, timeout=10),
            )
            if expect_refusal:
                if status == 200:
                    self.state.violate(f"I3: an exchange for completed task {task} was issued")
                continue
            if status != 200:
                # The one expected refusal: the completer ended this task meanwhile.
                if "already complete" not in str(body.get("error_description", "")):
                    self.state.violate(f"unexpected exchange refusal {status}: {body}")
                continue
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            tok = Token(body["access_token"], claims["jti"], claims["task_id"], claims["exp"])
            with st.lock:
                st.tokens.append(tok)
                st.by_task[tok.task].append(tok)
                if tok.task not in st.open_tasks and tok.task not in st.completed:
                    st.open_tasks.append(tok.task)

    def introspector(self, seed: int) -> None:
        rng = random.Random(seed)
        http = session()
        for _ in range(MAX_OPS_PER_THREAD):
            if self.stop.is_set():
                return
            with self.state.lock:
                if not self.state.tokens:
                    tok = None
                else:
                    tok = rng.choice(self.state.tokens[-5000:])
                    dead_since = min(
                        self.state.revoked.get(tok.jti, float("inf")),
                        self.state.completed.get(tok.task, float("inf")),
                    )
            if tok is None:
                time.sleep(0.05)
                continue
            sent = time.monotonic()
            status, body = self.introspect(http, tok.token)
            if status == 200 and body.get("active"):
                if dead_since < sent:
                    self.state.violate(f"I3: revoked/completed token {tok.jti} introspected active")
                if body.get("exp", 0) <= time.time() - 1:
                    self.state.violate(f"expired token {tok.jti} introspected active")

    def completer(self, seed: int) -> None:
        rng = random.Random(seed)
        http = session()
        for _ in range(MAX_OPS_PER_THREAD):
            if self.stop.wait(self.args.complete_every):
                return
            with self.state.lock:
                candidates = [t for t in self.state.open_tasks if len(self.state.by_task[t]) >= 2]
                task = rng.choice(candidates) if candidates else None
                live = [t for t in self.state.by_task.get(task, []) if t.exp > time.time() + 1]
            if not task or not live:
                continue
            status, _ = self.timed(
                "complete",
                lambda t=live[0].token: http.post(
                    self.stack.url + "/tasks/complete",
                    headers={"Authorization": f"Bearer {t}"},
                    timeout=10,
                ),
            )
            if status != 200:
                continue
            with self.state.lock:
                self.state.completed[task] = time.monotonic()
                if task in self.state.open_tasks:
                    self.state.open_tasks.remove(task)
                members = list(self.state.by_task[task])
            for tok in members[:50]:
                self.must_be_inactive(http, tok, "completed-task")

    def revoker(self, seed: int) -> None:
        rng = random.Random(seed)
        http = session()
        for _ in range(MAX_OPS_PER_THREAD):
            if self.stop.wait(self.args.revoke_every):
                return
            with self.state.lock:
                live = [t for t in self.state.tokens[-2000:] if t.exp > time.time() + 1]
                tok = rng.choice(live) if live else None
            if tok is None:
                continue
            status, _ = self.timed(
                "revoke",
                lambda t=tok.token: http.post(
                    self.stack.url + "/revoke", data={"token": t}, timeout=10
                ),
            )
            if status == 200:
                with self.state.lock:
                    self.state.revoked[tok.jti] = time.monotonic()
                self.must_be_inactive(http, tok, "revoked")

    def run(self) -> float:
        threads = []
        plan = [
            (self.exchanger, self.args.exchangers),
            (self.introspector, self.args.introspectors),
            (self.completer, 1),
            (self.revoker, 1),
        ]
        n = 0
        for target, count in plan:
            for _ in range(count):
                n += 1
                threads.append(threading.Thread(target=target, args=(n,), daemon=True))
        start = time.monotonic()
        for t in threads:
            t.start()
        deadline = start + self.args.seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if self.args.progress:
                done = sum(v for k, v in self.state.counts.items())
                print(f"  {time.monotonic() - start:5.0f}s  {done:,} requests", flush=True)
        self.stop.set()
        for t in threads:
            t.join(30)
        return time.monotonic() - start


# -- Redis measurements --------------------------------------------------------------------------


def key_counts(r: redis.Redis) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for key in r.scan_iter(count=10_000):
        for label, prefix in KEY_TYPES:
            if key == prefix or (prefix.endswith(":") and key.startswith(prefix)):
                counts[label] += 1
                break
        else:
            counts["other errand" if key.startswith(keys.PREFIX) else "other"] += 1
    return dict(counts)


def bytes_of(r: redis.Redis, labels: tuple[str, ...], *, invert: bool = False) -> int:
    """MEMORY USAGE summed over the keys of the given types (or, invert, of all others)."""
    prefixes = [p for label, p in KEY_TYPES if label in labels]
    names = [
        k
        for k in r.scan_iter(count=10_000)
        if any(k == p or (p.endswith(":") and k.startswith(p)) for p in prefixes) != invert
    ]
    total = 0
    for i in range(0, len(names), 500):
        pipe = r.pipeline(transaction=False)
        for name in names[i : i + 500]:
            pipe.memory_usage(name, samples=0)
        total += sum(int(x or 0) for x in pipe.execute())
    return total


def snapshot(r: redis.Redis) -> dict[str, Any]:
    """used_memory, and the bytes of each kind of key (MEMORY USAGE): the bounded audit
    stream, RQ's own job records (result_ttl), the TTL-bound keys, and `state_bytes`: every
    other key, which is what must return to the baseline once everything has expired."""
    used = int(r.info("memory")["used_memory"])
    audit = bytes_of(r, ("audit stream",))
    rq = bytes_of(r, ("rq",))
    return {
        "used_memory": used,
        "audit_bytes": audit,
        "rq_bytes": rq,
        "ttl_bound_bytes": bytes_of(r, BY_TTL),
        "feed_bytes": bytes_of(r, ("revocation feed",)),
        "state_bytes": bytes_of(r, ("audit stream", "rq", "revocation feed", *BY_TTL), invert=True),
        "keys": key_counts(r),
        "audit_entries": int(r.xlen(keys.AUDIT_STREAM)) if r.exists(keys.AUDIT_STREAM) else 0,
    }


def wait_until(cond: Any, timeout: float, poll: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return bool(cond())


# -- checks --------------------------------------------------------------------------------------


def issued_jtis(r: redis.Redis) -> tuple[set[str], int]:
    """The jti HMACs of the issued events (audit events carry no plain jti)."""
    out: set[str] = set()
    n = 0
    for _id, fields in r.xrange(keys.AUDIT_STREAM):
        n += 1
        try:
            event = json.loads(fields["e"])
        except (KeyError, ValueError):
            continue
        if event.get("event") == "token.exchange" and event.get("outcome") == "issued":
            out.add(event.get("jti_hmac"))
    return out, n


def check_after_load(soak: Soak, r: redis.Redis, checks: dict[str, Any]) -> None:
    st = soak.state
    audited, entries = issued_jtis(r)
    trimmed = entries >= soak.args.audit_maxlen * 0.95
    live = [k.split(":", 2)[2] for k in r.scan_iter(keys.PREFIX + "grant:*", count=10_000)]
    missing_live = [j for j in live if jti_hmac(j) not in audited]
    missing_200 = [t.jti for t in st.tokens if jti_hmac(t.jti) not in audited]
    checks["I2 every live grant has an issued audit event"] = (
        not missing_live,
        f"{len(live)} live grants, {len(missing_live)} without"
        + (" (audit stream trimmed)" if trimmed else ""),
    )
    checks["I2 every 200 exchange has an issued audit event"] = (
        not missing_200 or trimmed,
        f"{len(st.tokens)} issued, {len(missing_200)} without",
    )
    no_ttl = [k for k in r.scan_iter(keys.PREFIX + "grant:*", count=10_000) if r.ttl(k) == -1]
    checks["I4 every grant key has a TTL"] = (not no_ttl, f"{len(no_ttl)} without a TTL")
    # I3, at the end of the load: every revoked token and every token of a completed task
    # that has not expired yet is inactive.
    http = session()
    now = time.time()
    dead = [
        t for t in st.tokens if (t.jti in st.revoked or t.task in st.completed) and t.exp > now + 1
    ]
    for tok in dead[: soak.args.final_checks]:
        soak.must_be_inactive(http, tok, "revoked/completed (final)")
    checks["I3 revoked and completed tokens inactive (final pass)"] = (
        not any(v.startswith("I3") for v in st.violations),
        f"{min(len(dead), soak.args.final_checks)} re-checked; "
        f"{sum(1 for v in st.violations if v.startswith('I3'))} violations during the run",
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_summary(result: dict[str, Any]) -> None:
    print()
    print(
        f"soak: {result['seconds']:.0f} s of load, {result['requests']:,} requests "
        f"({result['rps']:.0f}/s), {result['tokens']:,} tokens issued, "
        f"{result['completed_tasks']} tasks completed, {result['revoked']} tokens revoked"
    )
    print()
    print(f"{'operation':<12} {'status':>6} {'count':>9}")
    for key in sorted(result["counts"]):
        op, status = key.rsplit(" ", 1)
        print(f"{op:<12} {status:>6} {result['counts'][key]:>9,}")
    print()
    print(f"{'operation':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for op, lat in sorted(result["latency"].items()):
        print(f"{op:<12} {lat['p50']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f}")
    print()
    points = [
        ("baseline", result["baseline"]),
        ("peak", result["peak"]),
        ("expired", result["after"]),
        ("TTLs done", result["settled"]),
    ]
    print(f"{'redis':<30}" + "".join(f"{name:>13}" for name, _ in points))
    for label in (
        "used_memory",
        "audit_bytes",
        "rq_bytes",
        "feed_bytes",
        "ttl_bound_bytes",
        "state_bytes",
    ):
        print(f"{label:<30}" + "".join(f"{pt[label]:>13,}" for _, pt in points))
    labels = sorted(set().union(*(pt["keys"] for _, pt in points)))
    for label in labels:
        print(
            f"  keys: {label:<22}" + "".join(f"{pt['keys'].get(label, 0):>13,}" for _, pt in points)
        )
    print()
    width = max(len(k) for k in result["checks"])
    for name, (ok, detail) in result["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    if result["violations"]:
        print()
        print("violations (first 20):")
        for v in result["violations"][:20]:
            print("  " + v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=120.0, help="length of the load (s), 5..3600")
    p.add_argument("--exchangers", type=int, default=3)
    p.add_argument("--introspectors", type=int, default=2)
    p.add_argument("--min-life", type=int, default=3, help="shortest requested_lifetime (s)")
    p.add_argument("--max-life", type=int, default=10, help="longest requested_lifetime (s)")
    p.add_argument("--subject-lifetime", type=int, default=15, help="subject tokens' lifetime (s)")
    p.add_argument("--complete-every", type=float, default=0.2, help="seconds between completions")
    p.add_argument("--revoke-every", type=float, default=0.1, help="seconds between revocations")
    p.add_argument("--final-checks", type=int, default=2000, help="bound on the final re-checks")
    p.add_argument("--settle", type=float, default=60.0, help="bound on the wait for expiry (s)")
    p.add_argument(
        "--ttl-settle",
        type=float,
        default=120.0,
        help="bound on the wait for TTL-bound keys (replay, tombstones) to expire (s); 0: skip",
    )
    p.add_argument(
        "--memory-slack",
        type=float,
        default=0.10,
        help="allowed growth of key memory over the baseline (fraction)",
    )
    p.add_argument("--audit-maxlen", type=int, default=100_000)
    p.add_argument("--progress", action="store_true", help="print progress every second")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--json", action="store_true", help="also print one JSON summary line")
    args = p.parse_args(argv)
    if not 5 <= args.seconds <= 3600:
        p.error("--seconds must be 5..3600")
    if not 1 <= args.min_life <= args.max_life <= 60:
        p.error("need 1 <= --min-life <= --max-life <= 60")
    if not 5 <= args.subject_lifetime <= 300:
        p.error("--subject-lifetime must be 5..300 s")
    if not 1 <= args.exchangers <= 16 or not 0 <= args.introspectors <= 16:
        p.error("--exchangers 1..16, --introspectors 0..16")

    workdir = Path(tempfile.mkdtemp(prefix="errand-soak-"))
    server = RedisProcess(workdir / "redis")
    issuer = DevIssuer(load_or_create_key(workdir / "issuer" / "key.pem"))
    stack: TunedStack | None = None
    issuer_started = False
    try:
        server.start()
        issuer.start()
        issuer_started = True
        stack = TunedStack(
            workdir / "stack",
            server.url,
            issuer.issuer,
            extra_env={"ERRAND_SWEEP_INTERVAL_SECONDS": "1", "ERRAND_RECONCILE_AFTER_SECONDS": "5"},
        )

        def tune(doc: dict[str, Any]) -> None:
            # Short lifetimes everywhere, so that everything a soak writes expires within
            # about a minute of the load (tombstones must outlive the longest token).
            doc["broker"].update(
                audit_stream_maxlen=args.audit_maxlen,
                default_token_ttl_seconds=30,
                max_token_ttl_seconds=60,
                task_tombstone_seconds=TOMBSTONE_SECONDS,
            )

        stack.edit_config(tune)
        stack.start()
        r = redis.Redis.from_url(server.url, decode_responses=True)
        use_broker_audit_key(stack.env(), r)  # the audit's jti HMACs, as the broker makes them
        soak = Soak(stack, issuer, args)

        # Baseline: both web workers warm (JWKS mirror, scripts loaded), the warm-up's grants
        # expired and swept.
        http = session()
        for _ in range(4):
            form = exchange_form(soak.subject(), requested_lifetime="1")
            if http.post(stack.url + "/token", data=form, timeout=10).status_code != 200:
                print("warm-up exchange failed:\n" + stack.logs(), file=sys.stderr)
                return 2
        wait_until(lambda: not any(key_counts(r).get(c) for c in CLEAN), 15)
        baseline = snapshot(r)

        print(
            f"soak: {args.seconds:.0f} s, {args.exchangers} exchangers, {args.introspectors} "
            f"introspectors, 1 completer, 1 revoker; lifetimes {args.min_life}-{args.max_life} s; "
            f"redis {server.url}, broker {stack.url}",
            flush=True,
        )
        peak: dict[str, Any] = {}
        sampler_stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampler_stop.wait(2.0):
                try:
                    used = int(r.info("memory")["used_memory"])
                    if used > peak.get("used_memory", 0):
                        peak = snapshot(r)
                except redis.RedisError:
                    pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        elapsed = soak.run()
        sampler_stop.set()
        sampler.join(10)

        checks: dict[str, Any] = {}
        check_after_load(soak, r, checks)
        settled = wait_until(
            lambda: all(key_counts(r).get(c, 0) <= baseline["keys"].get(c, 0) for c in CLEAN),
            args.settle,
        )
        after = snapshot(r)
        checks["I5 grant and index keys back to the baseline after expiry"] = (
            settled,
            ", ".join(f"{c} {after['keys'].get(c, 0)}" for c in CLEAN),
        )
        persistent_ttl = [
            k for k in r.scan_iter(keys.PREFIX + "replay:*", count=10_000) if r.ttl(k) == -1
        ]
        persistent_ttl += [
            k for k in r.scan_iter(keys.PREFIX + "task-done:*", count=10_000) if r.ttl(k) == -1
        ]
        checks["TTL-bound keys (replay, tombstones) all carry a TTL"] = (
            not persistent_ttl,
            f"{len(persistent_ttl)} without a TTL",
        )
        settled_point = after
        if args.ttl_settle > 0:
            wait_until(
                lambda: not any(key_counts(r).get(c, 0) for c in ("replay", "task tombstone")),
                args.ttl_settle,
                poll=1.0,
            )
            settled_point = snapshot(r)
        # Errand's keys (all but the audit stream, the revocation feed and RQ's records) are
        # back to the baseline.
        limit = baseline["state_bytes"] * (1 + args.memory_slack) + 64 * 1024
        left = {c: settled_point["keys"].get(c, 0) for c in ("replay", "task tombstone")}
        checks["I5 key memory back near the baseline (audit, feed, RQ records excluded)"] = (
            settled_point["state_bytes"] + settled_point["ttl_bound_bytes"] <= limit,
            f"{settled_point['state_bytes'] + settled_point['ttl_bound_bytes']:,} B vs baseline "
            f"{baseline['state_bytes']:,} B (limit {int(limit):,} B; TTL-bound keys left: {left})",
        )
        # And used_memory grew by no more than the audit stream and RQ's records did: nothing
        # else (scripts, connections, fragments of freed keys) kept growing.
        grown = settled_point["used_memory"] - baseline["used_memory"]
        explained = sum(
            settled_point[k] - baseline[k] for k in ("audit_bytes", "rq_bytes", "feed_bytes")
        )
        checks["I5 used_memory growth explained by the audit stream, feed and RQ records"] = (
            grown <= explained * (1 + args.memory_slack) + 512 * 1024,
            f"used_memory +{grown:,} B; audit stream, feed and RQ records +{explained:,} B",
        )
        status_5xx = sum(
            v for k, v in soak.state.counts.items() if k.endswith((" 500", " 502", " 503", " 0"))
        )
        checks["I1 no 5xx and no dropped connection"] = (status_5xx == 0, f"{status_5xx} seen")
        checks["processes stayed up"] = (
            stack.alive("web") and stack.alive("worker"),
            "web, worker",
        )

        st = soak.state
        total = sum(st.counts.values())
        result = {
            "seconds": elapsed,
            "requests": total,
            "rps": total / elapsed if elapsed else 0.0,
            "tokens": len(st.tokens),
            "completed_tasks": len(st.completed),
            "revoked": len(st.revoked),
            "counts": dict(st.counts),
            "latency": {
                op: {
                    "p50": statistics.median(v) * 1000,
                    "p99": percentile(v, 0.99) * 1000,
                    "max": max(v) * 1000,
                }
                for op, v in st.latency.items()
                if v
            },
            "baseline": baseline,
            "peak": peak or after,
            "after": after,
            "settled": settled_point,
            "checks": checks,
            "violations": st.violations,
        }
        print_summary(result)
        if args.json:
            print(
                json.dumps({**result, "checks": {k: v[0] for k, v in checks.items()}}, default=str)
            )
        failed = [k for k, (ok, _) in checks.items() if not ok]
        return 1 if failed or st.violations else 0
    except (RuntimeError, OSError) as err:
        print(f"soak: setup failed: {err}", file=sys.stderr)
        if stack is not None:
            print(stack.logs(), file=sys.stderr)
        return 2
    finally:
        if stack is not None:
            stack.stop()
        if issuer_started:
            issuer.stop()
        server.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
