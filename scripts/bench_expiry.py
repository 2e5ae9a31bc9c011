#!/usr/bin/env python3
# ruff: noqa: E501 - report lines are formatted f-strings, easier to read unwrapped
"""Does Redis memory track live grants only? Mint 10,000 short-lived tokens through the real
HTTP stack, wait past their expiry and a sweep, and count what is left.

Starts privately on 127.0.0.1 (never the Redis on 6379): redis-server on a free port, the dev
issuer, the broker under gunicorn (config/gunicorn.conf.py) and `python -m workers` with
ERRAND_SWEEP_INTERVAL_SECONDS=1. Then:

  baseline   after a warm-up whose grants have expired and been swept
  issued     right after N exchanges (requested_lifetime=--lifetime, default 10 s)
  expired    once every grant has expired, and a sweep has emptied the indexes
  replay     (unless --no-wait-replay) once the subject tokens' replay keys have expired
             too: they live until the subject token's exp + clock skew (60 s), by design

and reports key counts by type and INFO used_memory at each point. The audit stream grows by
design (one event per exchange and one per expiry, bounded by audit_stream_maxlen) and RQ
keeps its own job records for a while; both are reported separately (MEMORY USAGE) and left
out of the comparison with the baseline.

    .venv/bin/python scripts/bench_expiry.py
    .venv/bin/python scripts/bench_expiry.py --tokens 2000 --lifetime 5 --json"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import redis  # noqa: E402
from bench_http import Stack, machine_info, run_python, run_wrk  # noqa: E402

from broker.store import keys  # noqa: E402

KEY_TYPES = [  # (label, prefix); the first match wins
    ("grant", keys.PREFIX + "grant:"),
    ("task index", keys.PREFIX + "task:"),
    ("identity index", keys.PREFIX + "ident:"),
    ("owner index", keys.PREFIX + "owner:"),
    ("expiry index", keys.EXPIRY_INDEX),
    ("replay", keys.PREFIX + "replay:"),
    ("audit stream", keys.AUDIT_STREAM),
    ("rq", "rq:"),
]
CLEAN = ("grant", "task index", "identity index", "owner index", "expiry index")


def key_counts(r: redis.Redis) -> dict[str, int]:
    counts = collections.Counter[str]()
    for key in r.scan_iter(count=10_000):
        for label, prefix in KEY_TYPES:
            if key == prefix or (key.startswith(prefix) and prefix.endswith(":")):
                counts[label] += 1
                break
        else:
            counts["other errand" if key.startswith(keys.PREFIX) else "other"] += 1
    return dict(counts)


def bytes_of(r: redis.Redis, pattern: str) -> int:
    total = 0
    names = list(r.scan_iter(match=pattern, count=10_000))
    for i in range(0, len(names), 500):
        pipe = r.pipeline(transaction=False)
        for name in names[i : i + 500]:
            pipe.memory_usage(name, samples=0)
        total += sum(int(x or 0) for x in pipe.execute())
    return total


def snapshot(r: redis.Redis, label: str) -> dict[str, Any]:
    audit = (
        int(r.memory_usage(keys.AUDIT_STREAM, samples=0) or 0) if r.exists(keys.AUDIT_STREAM) else 0
    )
    mem = r.info("memory")
    return {
        "point": label,
        "t": time.time(),
        "used_memory": int(mem["used_memory"]),
        # Not data: connection buffers (the load's and this script's clients) and cached scripts.
        "clients_bytes": int(mem.get("mem_clients_normal", 0)),
        "scripts_bytes": int(
            mem.get("used_memory_scripts", mem.get("used_memory_scripts_eval", 0))
        ),
        "other_keys": dict(
            itertools.islice(
                (
                    (k, int(r.memory_usage(k, samples=0) or 0))
                    for k in r.scan_iter(count=10_000)
                    if not any(
                        k == pre or (pre.endswith(":") and k.startswith(pre))
                        for _, pre in KEY_TYPES
                    )
                ),
                50,
            )
        ),
        "overhead_bytes": int(mem.get("used_memory_overhead", 0)),
        "dataset_bytes": int(mem.get("used_memory_dataset", 0)),
        "dbsize": int(r.dbsize()),
        "keys": key_counts(r),
        "audit_bytes": audit,
        "audit_entries": int(r.xlen(keys.AUDIT_STREAM)),
        "rq_bytes": bytes_of(r, "rq:*"),
        "replay_bytes": bytes_of(r, keys.PREFIX + "replay:*"),
    }


def wait_until(cond: Any, timeout: float, poll: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return bool(cond())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=10_000, help="tokens to issue")
    p.add_argument(
        "--lifetime",
        type=int,
        default=60,
        help="requested_lifetime of each token (s); longer than the issuing takes, so that "
        "all of them are live at once",
    )
    p.add_argument(
        "--subject-lifetime", type=int, default=45, help="lifetime of the minted subject tokens (s)"
    )
    p.add_argument("--workers", type=int, default=2, help="gunicorn web workers")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--issue-timeout", type=float, default=90.0, help="bound on the issuing phase (s)"
    )
    p.add_argument(
        "--no-wait-replay", action="store_true", help="do not wait for the replay keys to expire"
    )
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--json", action="store_true", help="print one JSON summary line at the end")
    args = p.parse_args(argv)
    if not 1 <= args.tokens <= 100_000 or not 1 <= args.lifetime <= 120:
        p.error("--tokens must be 1..100000 and --lifetime 1..120 s")
    if args.subject_lifetime < 5:
        p.error("--subject-lifetime must be at least 5 s")
    wrk_path = shutil.which("wrk")
    generator = args.generator if args.generator != "auto" else ("wrk" if wrk_path else "python")
    if generator == "wrk" and not wrk_path:
        p.error("wrk is not installed (apt-get install -y wrk), or use --generator python")

    machine = machine_info()
    print(
        f"machine: {machine['nproc']} CPUs, Python {machine['python']}, redis {machine['redis']}; "
        f"{args.tokens:,} tokens of {args.lifetime} s via {generator}, {args.workers} web workers, "
        f"sweep every 1 s; code: {machine['code']}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="errand-bench-expiry-"))
    points: list[dict[str, Any]] = []
    timeline: list[tuple[float, int, int, int]] = []
    issue: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    audit_exact = 0
    try:
        with Stack(workdir, max_ttl=max(60, args.lifetime)) as stack:
            stack.start_gunicorn(args.workers)
            stack.start_rq_worker(sweep_interval=1.0)
            r = redis.Redis.from_url(stack.redis_url, decode_responses=True)

            def live_grants() -> int:
                return sum(1 for _ in r.scan_iter(match=keys.grant("*"), count=10_000))

            def indexes_clean() -> bool:
                counts = key_counts(r)
                return all(counts.get(k, 0) == 0 for k in CLEAN)

            # Warm-up (JWKS, connections, RQ's first sweep), with 1-second grants.
            warm = stack.exchange_bodies(50, lifetime=1, subject_lifetime=args.subject_lifetime)
            run_python(
                stack.port, "/token", warm[:1], cycle=False, auth="", concurrency=1, duration=10
            )
            run_python(
                stack.port, "/token", warm[1:], cycle=False, auth="", concurrency=4, duration=30
            )
            warm_replay_until = time.time() + args.subject_lifetime + 60
            if not wait_until(indexes_clean, 30):
                print("warning: warm-up grants were not swept within 30 s")
            time.sleep(1.5)
            # The audit stream is measured exactly at the end by deleting it; start from none.
            r.delete(keys.AUDIT_STREAM)
            points.append(snapshot(r, "baseline"))

            stop_sampling = threading.Event()
            t_base = points[0]["t"]

            def sampler() -> None:
                rs = redis.Redis.from_url(stack.redis_url, decode_responses=True)
                while not stop_sampling.wait(1.0):
                    live = sum(1 for _ in rs.scan_iter(match=keys.grant("*"), count=10_000))
                    timeline.append(
                        (
                            round(time.time() - t_base, 1),
                            live,
                            int(rs.zcard(keys.EXPIRY_INDEX)),
                            int(rs.info("memory")["used_memory"]),
                        )
                    )
                rs.close()

            threading.Thread(target=sampler, daemon=True).start()
            bodies = stack.exchange_bodies(
                args.tokens, lifetime=args.lifetime, subject_lifetime=args.subject_lifetime
            )
            minted_at = time.time()
            audit_path = stack.audit_log_path(args.workers)
            start_offset = audit_path.stat().st_size

            def exchanges_done() -> int:
                with audit_path.open("rb") as fh:
                    fh.seek(start_offset)
                    return fh.read().count(b'"event":"token.exchange"')

            progress = {"n": -1, "at": time.monotonic()}

            def finished() -> bool:
                # Every exchange answered, or none for 3 s (a request lost with a stopped
                # wrk thread must not hold the run until --issue-timeout).
                n = exchanges_done()
                if n != progress["n"]:
                    progress.update(n=n, at=time.monotonic())
                return n >= args.tokens or (n > 0 and time.monotonic() - progress["at"] > 3.0)

            t_issue = time.time()
            if generator == "wrk":
                assert wrk_path is not None
                issue = run_wrk(
                    wrk_path,
                    stack.port,
                    "/token",
                    bodies,
                    cycle=False,
                    auth="",
                    threads=2,
                    concurrency=args.concurrency,
                    duration=args.issue_timeout,
                    prefix=workdir / "bodies-expiry",
                    stop_when=finished,
                )
            else:
                issue = run_python(
                    stack.port,
                    "/token",
                    bodies,
                    cycle=False,
                    auth="",
                    concurrency=args.concurrency,
                    duration=args.issue_timeout,
                )
            issued_s = time.time() - t_issue
            wait_until(lambda: exchanges_done() >= args.tokens, 5, poll=0.2)
            outcomes = collections.Counter[str]()
            with audit_path.open("rb") as fh:
                fh.seek(start_offset)
                for line in fh:
                    if b'"event":"token.exchange"' in line:
                        event = json.loads(line)
                        outcomes[
                            event.get("outcome")
                            if event.get("outcome") == "issued"
                            else f"denied:{event.get('reason')}"
                        ] += 1
            points.append(snapshot(r, "issued"))
            last_exp = time.time() + args.lifetime
            issue["issued"] = outcomes.get("issued", 0)
            issue["issue_seconds"] = round(issued_s, 1)
            issue["outcomes"] = dict(outcomes)
            print(
                f"issued: {outcomes.get('issued', 0):,} tokens in {issued_s:.1f} s "
                f"(p50 {issue.get('p50_ms', 0):.1f} ms, p99 {issue.get('p99_ms', 0):.1f} ms); "
                f"outcomes {dict(outcomes)}; {points[-1]['keys'].get('grant', 0):,} live grants now"
            )

            # Wait for the decay: grants expire by TTL, the sweep empties the indexes.
            wait_until(
                lambda: time.time() > last_exp + 1 and live_grants() == 0 and indexes_clean(),
                args.lifetime + 40,
                poll=1.0,
            )
            time.sleep(2.5)  # one more sweep interval, and Redis's cron to shrink its tables
            points.append(snapshot(r, "expired"))

            if not args.no_wait_replay:
                replay_until = max(minted_at + args.subject_lifetime + 60, warm_replay_until) + 2
                wait = replay_until - time.time()
                print(
                    f"waiting {wait:.0f} s for the replay keys (subject exp + 60 s skew) to expire ..."
                )
                wait_until(
                    lambda: key_counts(r).get("replay", 0) == 0, max(0.0, wait) + 20, poll=2.0
                )
                time.sleep(1.5)
                points.append(snapshot(r, "replay expired"))
            stop_sampling.set()
            # Exact memory of the audit stream: what deleting it frees (MEMORY USAGE of a
            # stream is an estimate).
            time.sleep(1.2)
            before_del = int(r.info("memory")["used_memory"])
            r.delete(keys.AUDIT_STREAM)
            audit_exact = before_del - int(r.info("memory")["used_memory"])
            r.close()
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    base = points[0]
    labels = [
        "grant",
        "task index",
        "identity index",
        "owner index",
        "expiry index",
        "replay",
        "rq",
        "other errand",
    ]
    print(
        f"\n{'point':<15} {'used_memory':>12} {'dbsize':>7} "
        + " ".join(f"{lab:>9.9}" for lab in labels)
        + f" {'audit entries':>13} {'audit MiB':>9} {'rq KiB':>7}"
    )
    for pt in points:
        print(
            f"{pt['point']:<15} {pt['used_memory']:>12,} {pt['dbsize']:>7,} "
            + " ".join(f"{pt['keys'].get(lab, 0):>9,}" for lab in labels)
            + f" {pt['audit_entries']:>13,} {pt['audit_bytes'] / 2**20:>9.2f} {pt['rq_bytes'] / 1024:>7.1f}"
        )
    issued_pt = next(pt for pt in points if pt["point"] == "issued")
    final = points[-1]
    peak = issued_pt["used_memory"] - base["used_memory"]
    # What is left beyond the baseline once the audit stream's and RQ's growth (by design)
    # and any replay keys still live are set aside.
    residual = (
        final["used_memory"]
        - base["used_memory"]
        - audit_exact
        - (final["rq_bytes"] - base["rq_bytes"])
        - (final["clients_bytes"] - base["clients_bytes"])
        - (final["scripts_bytes"] - base["scripts_bytes"])
        - (final["replay_bytes"] - base["replay_bytes"])
    )
    # Redis keeps a fixed ~150 KiB more after such a run whatever the token count (the same
    # at 500 and at 10,000 tokens): allocator and table state, not per-grant data.
    tolerance = 256 * 1024 + int(0.02 * peak)
    checks = {
        "all_grants_gone": final["keys"].get("grant", 0) == 0,
        "indexes_empty": all(final["keys"].get(k, 0) == 0 for k in CLEAN),
        "memory_back_near_baseline": residual <= tolerance,
    }
    if not args.no_wait_replay:
        checks["replay_keys_gone"] = final["keys"].get("replay", 0) <= base["keys"].get("replay", 0)
    print(
        f"\nmemory: baseline {base['used_memory'] / 2**20:.2f} MiB, +{peak / 2**20:.2f} MiB with "
        f"{issued_pt['keys'].get('grant', 0):,} live grants; after expiry {residual / 1024:+.1f} KiB vs the "
        f"baseline once the audit stream (+{audit_exact / 2**20:.2f} MiB by DEL, "
        f"{final['audit_entries'] - base['audit_entries']:,} events) and RQ job records "
        f"(+{(final['rq_bytes'] - base['rq_bytes']) / 1024:.1f} KiB), client buffers "
        f"({(final['clients_bytes'] - base['clients_bytes']) / 1024:+.1f} KiB) and cached scripts "
        f"({(final['scripts_bytes'] - base['scripts_bytes']) / 1024:+.1f} KiB) are set aside "
        f"(tolerance {tolerance / 1024:.0f} KiB)"
    )
    if timeline:
        print("decay (s since baseline, live grants, expiry-index entries, used_memory MiB):")
        step = max(1, len(timeline) // 16)
        print("   " + "  ".join(f"{t}s:{g}/{z}/{m / 2**20:.1f}" for t, g, z, m in timeline[::step]))
    for name, ok in checks.items():
        print(f"   {'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "expiry",
                    "machine": machine,
                    "tokens": args.tokens,
                    "lifetime_s": args.lifetime,
                    "issue": {
                        k: (round(v, 2) if isinstance(v, float) else v) for k, v in issue.items()
                    },
                    "points": points,
                    "audit_stream_bytes_exact": audit_exact,
                    "residual_bytes": residual,
                    "tolerance_bytes": tolerance,
                    "checks": checks,
                },
                separators=(",", ":"),
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
