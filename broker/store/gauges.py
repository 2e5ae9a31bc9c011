"""What /metrics reads from Redis when it is scraped: counts, never a walk over grants.

Every figure is one O(1) or O(log N) command (ZCARD, ZCOUNT, LLEN), all in one pipelined
round trip; only "grants still live after their task ended" looks at members, and then at
most ENDED_TASKS_CHECKED tasks, each with one ZCOUNT, in a second round trip. The web process
caches the reading for a few seconds (broker/metrics_gauges.py), so scrape frequency does not
become Redis load.

Tasks by state: TASK_STATES maps a state's name to the one command that counts its tasks, so
a new state is one entry here (and its index, kept by the script that moves a task into it):
- open: not completed, holding a grant that has not expired (revoked or not): the index
  lua/save_grant.lua keeps, task -> exp of its newest grant;
- completed: completed and still tombstoned (lua/complete_task.lua), task -> tombstone expiry;
- cleanup_pending: completed, and the worker has not yet revoked its grants (keys.COMPLETING).
Members past their score are not counted; the sweep removes them (prune)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from broker.store import keys
from broker.store.connection import store_errors

# How many of the oldest ended tasks the "live after end" gauge looks into per reading.
ENDED_TASKS_CHECKED = 100
# A worker that has not reported in for this long is forgotten (and the key's TTL).
HEARTBEAT_KEEP_SECONDS = 3600

Pipe = Any  # redis.client.Pipeline, untyped in redis-py


def _above(now: float) -> str:
    return f"({int(now)}"


TASK_STATES: dict[str, Callable[[Pipe, float], None]] = {
    "open": lambda pipe, now: pipe.zcount(keys.TASKS_OPEN, _above(now), "+inf"),
    "completed": lambda pipe, now: pipe.zcount(keys.TASKS_COMPLETED, _above(now), "+inf"),
    "cleanup_pending": lambda pipe, now: pipe.zcard(keys.COMPLETING),
}


@dataclass(frozen=True)
class StoreReading:
    live_grants: int  # grants in the expiry index that have not expired (revoked ones leave it)
    tasks: dict[str, int]  # TASK_STATES name -> tasks in that state
    jobs: dict[str, int]  # RQ: queued, scheduled, started, failed
    grants_live_after_task_end: int  # of ended tasks older than the grace (should be 0)
    ended_tasks_checked: int  # how many ended tasks that figure looked at (capped)
    newest_heartbeat: float | None  # unix time of the latest worker report, or None
    workers_reporting: int = 0  # workers that reported within the keep window


class RedisGauges:
    """Scrape-time readings and the worker heartbeat. `job_keys` are RQ's own keys of the
    errand queue and its registries (broker/jobs.py names them), by state."""

    def __init__(
        self,
        client: redis.Redis,
        job_keys: dict[str, tuple[str, str]],
        queue_client: redis.Redis | None = None,
    ) -> None:
        self._r = client
        self._job_keys = job_keys  # state -> (redis type: "list" | "zset", key)
        # RQ's keys live on the queue Redis (ERRAND_QUEUE_REDIS_URL), the main one by default.
        self._q = queue_client if queue_client is not None else client

    @store_errors()
    def read(self, *, now: float, ended_before: float) -> StoreReading:
        pipe = self._r.pipeline(transaction=False)
        pipe.zcount(keys.EXPIRY_INDEX, _above(now), "+inf")
        for count in TASK_STATES.values():
            count(pipe, now)
        queue = pipe if self._q is self._r else self._q.pipeline(transaction=False)
        for kind, key in self._job_keys.values():
            if kind == "list":
                queue.llen(key)
            else:
                queue.zcard(key)
        pipe.zrangebyscore(keys.COMPLETING, "-inf", ended_before, start=0, num=ENDED_TASKS_CHECKED)
        pipe.zrevrange(keys.WORKER_HEARTBEATS, 0, 0, withscores=True)
        pipe.zcount(keys.WORKER_HEARTBEATS, now - HEARTBEAT_KEEP_SECONDS, "+inf")
        replies = iter(pipe.execute())
        live = int(next(replies))
        tasks = {state: int(next(replies)) for state in TASK_STATES}
        job_replies = replies if queue is pipe else iter(queue.execute())
        jobs = {state: int(next(job_replies)) for state in self._job_keys}
        ended = list(next(replies))
        newest = list(next(replies))
        reporting = int(next(replies))
        after_end = 0
        if ended:
            pipe = self._r.pipeline(transaction=False)
            for task_id in ended:
                pipe.zcount(keys.task_index(str(task_id)), _above(now), "+inf")
            after_end = sum(int(n) for n in pipe.execute())
        return StoreReading(
            live_grants=live,
            tasks=tasks,
            jobs=jobs,
            grants_live_after_task_end=after_end,
            ended_tasks_checked=len(ended),
            newest_heartbeat=float(newest[0][1]) if newest else None,
            workers_reporting=reporting,
        )

    @store_errors()
    def newest_heartbeat(self) -> float | None:
        """Unix time of the latest report of any worker (what /readyz asks)."""
        newest = self._r.zrevrange(keys.WORKER_HEARTBEATS, 0, 0, withscores=True)
        return float(newest[0][1]) if newest else None

    @store_errors()
    def heartbeat(self, worker: str, *, now: float) -> None:
        """A worker reports in; workers gone for an hour are dropped."""
        pipe = self._r.pipeline(transaction=False)
        pipe.zadd(keys.WORKER_HEARTBEATS, {worker: now})
        pipe.zremrangebyscore(keys.WORKER_HEARTBEATS, "-inf", now - HEARTBEAT_KEEP_SECONDS)
        pipe.expire(keys.WORKER_HEARTBEATS, HEARTBEAT_KEEP_SECONDS)
        pipe.execute()

    @store_errors()
    def prune(self, *, now: float) -> None:
        """Drop members past their score from the task-state indexes (the sweep calls this)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.zremrangebyscore(keys.TASKS_OPEN, "-inf", int(now))
        pipe.zremrangebyscore(keys.TASKS_COMPLETED, "-inf", int(now))
        pipe.execute()
