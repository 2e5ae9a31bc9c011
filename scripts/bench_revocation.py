"""Revoke-all at scale: fill a private Redis with N live grants, then measure
  1. the time from revoke-all until introspection of a sample of old tokens says inactive,
  2. the time until real RQ workers (`python -m workers`) have cleaned up every old grant.

Usage: .venv/bin/python scripts/bench_revocation.py --sizes 10000 100000 1000000 [--workers 2]
Never touches the Redis on 6379: it starts its own redis-server on a free port."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.dev.embedded_redis import RedisProcess  # noqa: E402
from broker.domain.bulk_revocation import revoke_all  # noqa: E402
from broker.domain.introspection import introspect  # noqa: E402
from broker.domain.models import Grant  # noqa: E402
from broker.services import build_services  # noqa: E402
from broker.settings import Settings  # noqa: E402
from broker.store import keys  # noqa: E402
from broker.tokens.keyring import generate_key  # noqa: E402
from broker.tokens.mint import mint_access_token  # noqa: E402
from scripts._bulk import BulkGrantWriter  # noqa: E402

CONFIG = """
broker:
  issuer: https://errand.bench
  max_token_ttl_seconds: 3600
  limits: {per_address: 0, per_issuer: 0, per_identity: 0, max_live_grants_per_identity: 0}
  task_tombstone_seconds: 3600
issuers:
  - id: ci
    issuer: https://ci.bench
    audience: errand
    algorithms: [ES256]
identities:
  - id: bench-svc
    type: service
    owner: bench-team
    purpose: benchmark
    match: [{issuer: ci, claims: {repository_id: "1"}}]
    allow: {audiences: [https://api.bench], scopes: [read, write], max_ttl_seconds: 3600}
"""


def fill(svc, n: int, sample: int) -> list[str]:
    """Write n grants through the real grant-write script (pipelined); return sample tokens."""
    now = int(time.time())
    epoch = svc.revocations.current_epoch()
    grants = [
        Grant(
            jti=secrets.token_urlsafe(16),
            identity_id="bench-svc",
            identity_type="service",
            owner="bench-team",
            task_id=f"task_{i // 4}",
            audiences=("https://api.bench",),
            scopes=("read", "write"),
            iat=now,
            exp=now + 3000,
            client_id="bench-svc",
            issuer_id="ci",
            epoch=epoch,
        )
        for i in range(n)
    ]
    writer = BulkGrantWriter(svc.redis, audit_maxlen=svc.config.broker.audit_stream_maxlen)
    writer.save_many(grants, now=now)
    return [mint_access_token(g, svc.keyring, svc.config.broker.issuer) for g in grants[:sample]]


def run(n: int, workers: int, sample: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="errand-bench-rev-"))
    server = RedisProcess(tmp / "redis").start()
    key_dir = tmp / "keys"
    generate_key(key_dir)
    (tmp / "errand.yaml").write_text(CONFIG)
    env = {
        **os.environ,
        "ERRAND_CONFIG": str(tmp / "errand.yaml"),
        "REDIS_URL": server.url,
        "ERRAND_SIGNING_KEY_DIR": str(key_dir),
        "ERRAND_SWEEP_INTERVAL_SECONDS": "3600",
        "ERRAND_ENV": "development",
    }
    settings = Settings(
        config_path=tmp / "errand.yaml",
        redis_url=server.url,
        signing_key_dir=key_dir,
        redis_timeout_seconds=30,
    )
    svc = build_services(settings)
    try:
        t0 = time.perf_counter()
        tokens = fill(svc, n, sample)
        fill_s = time.perf_counter() - t0
        used = int(svc.redis.info("memory")["used_memory"])
        assert all(introspect(t, svc)["active"] for t in tokens)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "workers"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        time.sleep(1.5)  # workers registered and listening

        t_cut = time.perf_counter()
        result = revoke_all(svc, reason="benchmark", actor="bench")
        cut_ms = (time.perf_counter() - t_cut) * 1000
        t_first = time.perf_counter()
        first_inactive = not introspect(tokens[0], svc)["active"]
        first_ms = (time.perf_counter() - t_first) * 1000
        while any(introspect(t, svc)["active"] for t in tokens):
            pass
        effect_ms = (time.perf_counter() - t_cut) * 1000
        assert first_inactive

        r = svc.redis
        deadline = time.time() + 600
        while time.time() < deadline:
            progress = r.hgetall(keys.fanout_progress(result.epoch))
            if progress.get("done") == "1":
                break
            time.sleep(0.05)
        cleanup_s = time.perf_counter() - t_cut
        left = r.zcard(keys.EXPIRY_INDEX)
        grants_left = sum(1 for _ in r.scan_iter(keys.PREFIX + "grant:*", count=10000))
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        return {
            "live_grants": n,
            "fill_seconds": round(fill_s, 1),
            "used_memory_mb": round(used / 2**20, 1),
            "revoke_all_call_ms": round(cut_ms, 2),
            "first_introspection_after_ms": round(cut_ms + first_ms, 2),
            "whole_sample_inactive_ms": round(effect_ms, 2),
            "sample": len(tokens),
            "cleanup_seconds": round(cleanup_s, 2),
            "grants_left": grants_left,
            "expiry_index_left": left,
            "batches": int(progress.get("batches", 0)),
            "workers": workers,
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sample", type=int, default=100)
    args = ap.parse_args()
    print(
        f"{'live grants':>12} {'cut (ms)':>9} {'1st inactive (ms)':>18} {'sample (ms)':>12} "
        f"{'clean-up (s)':>13} {'left':>6} {'fill (s)':>9} {'mem (MB)':>9}"
    )
    for n in args.sizes:
        res = run(n, args.workers, args.sample)
        print(
            f"{res['live_grants']:>12} {res['revoke_all_call_ms']:>9} "
            f"{res['first_introspection_after_ms']:>18} {res['whole_sample_inactive_ms']:>12} "
            f"{res['cleanup_seconds']:>13} "
            f"{res['grants_left']:>6} {res['fill_seconds']:>9} {res['used_memory_mb']:>9}"
        )
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
