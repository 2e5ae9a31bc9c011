#!/usr/bin/env python3
# ruff: noqa: E501 - report lines are formatted f-strings, easier to read unwrapped
"""Redis memory per live grant, written through the real store code path.

Starts a private redis-server on a free port (never the one on 6379) and fills it with N live
grants (default 100,000) by calling broker.store.grants.RedisGrants.save_grant, the same
Lua script a real exchange runs, with realistic values: a 22-character jti, a task id per
grant (or --grants-per-task), three identities with three owners, one audience, two scopes,
the replay entry of a single-use subject token and the audit event the exchange writes.

It measures INFO memory `used_memory` before and after, in three set-ups (Redis flushed in
between):

  grants          grant hash + task/identity/owner/expiry index entries (no replay entry,
                  audit stream trimmed to ~1 entry)
  +replay         the above plus the replay key of each subject token
  full            the above plus the audit stream at its configured bound (default 100,000)

and MEMORY USAGE of each key type in the full set-up, then prints a table.

    .venv/bin/python scripts/bench_memory.py                    # 100,000 grants
    .venv/bin/python scripts/bench_memory.py --grants 20000 --json"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from broker.dev.embedded_redis import RedisProcess  # noqa: E402
from broker.domain.exchange import new_id  # noqa: E402
from broker.domain.models import Grant  # noqa: E402
from broker.store import keys  # noqa: E402
from broker.store.connection import connect  # noqa: E402
from broker.store.grants import RedisGrants  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_http import code_version  # noqa: E402

IDENTITIES = [  # (identity id, owner, type)
    ("acme-app-deploy", "platform-team", "service"),
    ("acme-app-pr-checks", "qa-team", "service"),
    ("billing-nightly-etl", "data-team", "agent"),
]
ISSUER_ID = "github-actions"
AUDIENCE = "https://deploy.acme.example"
SCOPES = ("deploy:read", "deploy:write")
TARGET_BYTES = 1024


def make_grant(
    now: int, ttl: int, task_id: str, ident: tuple[str, str, str]
) -> tuple[Grant, tuple[str, str, int], dict[str, Any]]:
    """A grant, its replay entry and its audit event, shaped as exchange_token builds them."""
    identity_id, owner, identity_type = ident
    grant = Grant(
        jti=new_id(),
        identity_id=identity_id,
        identity_type=identity_type,
        owner=owner,
        task_id=task_id,
        audiences=(AUDIENCE,),
        scopes=SCOPES,
        iat=now,
        exp=now + ttl,
        client_id=identity_id,
        issuer_id=ISSUER_ID,
        epoch=0,
        purpose="",
    )
    subject_jti = secrets.token_hex(16)  # what GitHub-shaped tokens carry (see devissuer)
    replay = (ISSUER_ID, subject_jti, now + 300 + 60)  # subject exp + clock skew
    event = {
        "event": "token.exchange",
        "request_id": secrets.token_hex(8),
        "client_address": "10.0.3.17",
        "token_sha256": hashlib.sha256(subject_jti.encode()).hexdigest(),
        "issuer": ISSUER_ID,
        "identity": identity_id,
        "task": task_id,
        "subject": "repo:acme/app:ref:refs/heads/main",
        "rule": f"{identity_id}#0",
        "owner": owner,
        "outcome": "issued",
        "jti": grant.jti,
        "audience": [AUDIENCE],
        "scope": " ".join(SCOPES),
        "exp": grant.exp,
        "ts": now + random.random(),
    }
    return grant, replay, event


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def _fill_part(
    url: str,
    indexes: range,
    tasks: list[str],
    now: int,
    *,
    with_replay: bool,
    audit_maxlen: int,
    ttl: int,
    grants_per_task: int,
) -> int:
    client = connect(url, timeout=10.0)
    store = RedisGrants(client, audit_maxlen=audit_maxlen)
    # The revocation epoch to stamp, read as an exchange reads it (it may not start at 0).
    epoch = store.preflight(issuer_id=ISSUER_ID, jti=None, task_id=tasks[0]).epoch
    done = 0
    for i in indexes:
        # A task has one owner: every grant of a task goes to the same identity.
        grant, replay, event = make_grant(
            now, ttl, tasks[i // grants_per_task], IDENTITIES[(i // grants_per_task) % 3]
        )
        grant = dataclasses.replace(grant, epoch=epoch)
        store.save_grant(grant, replay=replay if with_replay else None, audit=event, now=now)
        done += 1
    client.close()
    return done


def fill(
    url: str,
    n: int,
    *,
    with_replay: bool,
    audit_maxlen: int,
    ttl: int,
    grants_per_task: int,
    procs: int,
) -> float:
    """Write n grants through RedisGrants.save_grant (one Lua call each) from `procs`
    processes, each with its own store and connection; returns the seconds it took."""
    now = int(time.time())
    tasks = [new_id("task_") for _ in range((n + grants_per_task - 1) // grants_per_task)]
    part = functools.partial(
        _fill_part,
        url,
        tasks=tasks,
        now=now,
        with_replay=with_replay,
        audit_maxlen=audit_maxlen,
        ttl=ttl,
        grants_per_task=grants_per_task,
    )
    chunks = [range(i, n, procs) for i in range(procs)]
    t0 = time.monotonic()
    if procs == 1:
        written = part(chunks[0])
    else:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
            written = sum(pool.map(part, chunks))
    elapsed = time.monotonic() - t0
    assert written == n, (written, n)
    return elapsed


def sample_usage(r: redis.Redis, pattern: str, limit: int) -> tuple[int, float]:
    """(number of keys matching, mean MEMORY USAGE of up to `limit` of them)."""
    found: list[str] = []
    count = 0
    for key in r.scan_iter(match=pattern, count=5000):
        count += 1
        if len(found) < limit:
            found.append(key)
    if not found:
        return 0, 0.0
    pipe = r.pipeline(transaction=False)
    for key in found:
        pipe.memory_usage(key, samples=0)
    sizes = [s or 0 for s in pipe.execute()]
    return count, sum(sizes) / len(sizes)


def key_breakdown(r: redis.Redis, n: int, sample: int) -> list[dict[str, Any]]:
    rows = []
    for label, pattern in (
        ("grant hash", keys.grant("*")),
        ("replay key", keys.PREFIX + "replay:*"),
        ("task index zset", keys.task_index("*")),
    ):
        count, mean = sample_usage(r, pattern, sample)
        rows.append(
            {
                "key": label,
                "keys": count,
                "bytes_total": int(mean * count),
                "per_grant": mean * count / n,
            }
        )
    for label, names in (
        ("identity index zsets", [keys.identity_index(i[0]) for i in IDENTITIES]),
        ("expiry index zset", [keys.EXPIRY_INDEX]),
        ("audit stream", [keys.AUDIT_STREAM]),
    ):
        total = sum(int(r.memory_usage(k, samples=0) or 0) for k in names)
        rows.append(
            {"key": label, "keys": len(names), "bytes_total": total, "per_grant": total / n}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grants", type=int, default=100_000, help="live grants to write")
    p.add_argument("--audit-maxlen", type=int, default=100_000, help="broker.audit_stream_maxlen")
    p.add_argument(
        "--ttl", type=int, default=900, help="grant lifetime (s); they must outlive the run"
    )
    p.add_argument("--grants-per-task", type=int, default=1)
    p.add_argument("--procs", type=int, default=4, help="writer processes")
    p.add_argument("--sample", type=int, default=500, help="keys per type for MEMORY USAGE")
    p.add_argument("--json", action="store_true", help="print one JSON summary line at the end")
    args = p.parse_args(argv)
    if not 1 <= args.grants <= 1_000_000:
        p.error("--grants must be between 1 and 1,000,000")

    workdir = Path(tempfile.mkdtemp(prefix="errand-bench-mem-"))
    server = RedisProcess(workdir / "redis").start()
    results: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        info = {
            "redis": r.info("server")["redis_version"],
            "allocator": r.info("memory")["mem_allocator"],
        }
        setups = [
            ("grants", "grant + indexes, no replay, audit stream ~empty", False, 1),
            ("+replay", "grant + indexes + replay key", True, 1),
            ("full", f"+ audit stream (maxlen {args.audit_maxlen})", True, args.audit_maxlen),
        ]
        info["code"] = code_version()
        print(f"code: {info['code']} at {ROOT}")
        print(
            f"redis {info['redis']} ({info['allocator']}), {args.grants:,} grants per set-up, "
            f"{args.grants_per_task} grant(s) per task, {args.procs} writer processes"
        )
        for name, what, with_replay, maxlen in setups:
            r.flushall()
            # Load the scripts and open the writers' connections before the baseline.
            fill(
                server.url,
                1,
                with_replay=with_replay,
                audit_maxlen=1,
                ttl=args.ttl,
                grants_per_task=1,
                procs=1,
            )
            r.flushall()
            time.sleep(0.2)
            before = used_memory(r)
            secs = fill(
                server.url,
                args.grants,
                with_replay=with_replay,
                audit_maxlen=maxlen,
                ttl=args.ttl,
                grants_per_task=args.grants_per_task,
                procs=args.procs,
            )
            time.sleep(0.2)
            after = used_memory(r)
            live = sum(1 for _ in r.scan_iter(match=keys.grant("*"), count=5000))
            stream_len = r.xlen(keys.AUDIT_STREAM)
            audit_bytes = int(r.memory_usage(keys.AUDIT_STREAM, samples=0) or 0)
            row = {
                "setup": name,
                "what": what,
                "grants": args.grants,
                "live_grants": live,
                "dbsize": r.dbsize(),
                "audit_entries": stream_len,
                "used_memory_before": before,
                "used_memory_after": after,
                "delta_bytes": after - before,
                "bytes_per_grant": (after - before) / args.grants,
                "audit_stream_bytes": audit_bytes,
                "fill_seconds": round(secs, 1),
                "fill_rate": round(args.grants / secs),
            }
            results.append(row)
            print(
                f"  {name:<8} wrote {args.grants:,} in {secs:.1f} s ({row['fill_rate']:,}/s); "
                f"{live:,} live grants, {row['dbsize']:,} keys, audit stream {stream_len:,} entries"
            )
            if name == "full":
                breakdown = key_breakdown(r, args.grants, args.sample)
        r.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nRedis used_memory delta per live grant ({args.grants:,} live grants; target < {TARGET_BYTES} B):"
    )
    print(f"  {'set-up':<8} {'what':<48} {'delta MiB':>10} {'B/grant':>8}  target")
    for row in results:
        ok = "PASS" if row["bytes_per_grant"] < TARGET_BYTES else "FAIL"
        print(
            f"  {row['setup']:<8} {row['what']:<48} {row['delta_bytes'] / 2**20:>10.1f} "
            f"{row['bytes_per_grant']:>8.0f}  {ok}"
        )
    full = next((r for r in results if r["setup"] == "full"), None)
    if breakdown and full:
        print(
            f"\nMEMORY USAGE by key type in the full set-up (SAMPLES 0; mean of up to {args.sample} keys per type):"
        )
        print(f"  {'key type':<22} {'keys':>8} {'MiB':>8} {'B/grant':>8}")
        attributed = 0
        for row in breakdown:
            attributed += row["bytes_total"]
            print(
                f"  {row['key']:<22} {row['keys']:>8,} {row['bytes_total'] / 2**20:>8.1f} {row['per_grant']:>8.0f}"
            )
        rest = full["delta_bytes"] - attributed
        print(
            f"  {'(dict tables, expires)':<22} {'':>8} {rest / 2**20:>8.1f} {rest / args.grants:>8.0f}"
        )
        print(
            f"  {'total (used_memory)':<22} {full['dbsize']:>8,} {full['delta_bytes'] / 2**20:>8.1f} "
            f"{full['bytes_per_grant']:>8.0f}"
        )
        print(
            "  (MEMORY USAGE counts a key's value, its name and its main-dict entry; the hash-table "
            "bucket arrays and the expires dict are the unattributed rest)"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "memory",
                    "redis": info,
                    "grants": args.grants,
                    "grants_per_task": args.grants_per_task,
                    "audit_maxlen": args.audit_maxlen,
                    "target_bytes_per_grant": TARGET_BYTES,
                    "setups": results,
                    "breakdown_full": breakdown,
                },
                separators=(",", ":"),
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
