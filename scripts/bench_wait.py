"""What ERRAND_REDIS_WAIT_REPLICAS costs: revocations and grant writes per second, and their
latency, with WAIT off (0) and on (1), against a private primary with one replica.

Each operation is the store's own call (RedisGrantStore.revoke_grant, .save_grant), so WAIT
runs as the broker runs it: in the same pipeline as the script, on one connection.

Usage: .venv/bin/python scripts/bench_wait.py [--ops 3000] [--threads 1 4]
Never touches the Redis on 6379: it starts its own two redis-servers on free ports."""

from __future__ import annotations

import argparse
import logging
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.dev.embedded_redis import RedisProcess  # noqa: E402
from broker.domain.models import Grant  # noqa: E402
from broker.domain.ports import StoreUnavailable  # noqa: E402
from broker.store.connection import ReplicaWait, connect  # noqa: E402
from broker.store.redis import RedisGrantStore  # noqa: E402
from scripts._bulk import BulkGrantWriter  # noqa: E402


class _Short(logging.Handler):
    """Counts the warnings of a WAIT that fell short (revocations answer anyway)."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def grants(n: int, now: int, epoch: int) -> list[Grant]:
    return [
        Grant(
            jti=secrets.token_urlsafe(16),
            identity_id="bench-svc",
            identity_type="service",
            owner="bench-team",
            task_id=f"task_{i // 4}",
            audiences=("https://api.bench",),
            scopes=("read",),
            iat=now,
            exp=now + 3000,
            client_id="bench-svc",
            issuer_id="ci",
            epoch=epoch,
        )
        for i in range(n)
    ]


def run(
    items: list[Grant], op: Callable[[Grant], object], threads: int
) -> tuple[float, list[float]]:
    """Ops per second over all threads, and each op's latency in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [items[i::threads] for i in range(threads)]

    def work(chunk: list[Grant]) -> None:
        mine = []
        for grant in chunk:
            t = time.perf_counter()
            op(grant)
            mine.append((time.perf_counter() - t) * 1000)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=work, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(items) / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        primary = RedisProcess(Path(tmp) / "primary").start()
        replica = RedisProcess(Path(tmp) / "replica").start()
        try:
            client = connect(primary.url, timeout=2.0)
            replica_client = connect(replica.url, timeout=2.0)
            replica_client.replicaof("127.0.0.1", primary.port)
            while replica_client.info("replication").get("master_link_status") != "up":
                time.sleep(0.05)
            print(f"primary 127.0.0.1:{primary.port}, replica 127.0.0.1:{replica.port}")
            short = _Short()
            logging.getLogger("broker.store.connection").addHandler(short)
            print("op         WAIT threads   ops/s   p50 ms   p99 ms   short")
            for threads in args.threads:
                for replicas in (0, 1):
                    store = RedisGrantStore(
                        client, audit_maxlen=10_000, wait=ReplicaWait(replicas, 100)
                    )
                    now, epoch = int(time.time()), store.ensure_epoch()

                    def save(g: Grant, store: RedisGrantStore = store, now: int = now) -> None:
                        try:
                            store.save_grant(g, replay=None, audit={}, now=now)
                        except StoreUnavailable:
                            short.count += 1  # fail closed: this grant got no token

                    short.count = 0
                    rate, lat = run(grants(args.ops, now, epoch), save, threads)
                    _report("grant", replicas, threads, rate, lat, short.count)

                    live = grants(args.ops, now, epoch)
                    BulkGrantWriter(client, audit_maxlen=10_000).save_many(live, now=now)

                    def revoke(g: Grant, store: RedisGrantStore = store) -> None:
                        store.revoke_grant(g.jti, audit={})

                    short.count = 0
                    rate, lat = run(live, revoke, threads)
                    _report("revocation", replicas, threads, rate, lat, short.count)
                    client.flushdb()
        finally:
            replica.stop()
            primary.stop()


def _report(
    op: str, replicas: int, threads: int, rate: float, lat: list[float], short: int
) -> None:
    p99 = statistics.quantiles(lat, n=100)[98]
    print(
        f"{op:<10} {replicas:>4} {threads:>7} {rate:>7.0f} {statistics.median(lat):>8.2f} "
        f"{p99:>8.2f} {short:>7}"
    )


if __name__ == "__main__":
    main()
