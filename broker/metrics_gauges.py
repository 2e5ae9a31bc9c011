"""The gauges /metrics computes when it is scraped, from one reading of Redis
(broker/store/gauges.py) cached for ERRAND_METRICS_CACHE_SECONDS in each web process.

Redis unreachable is itself a reading: errand_redis_up 0, and the other gauges absent
(Prometheus shows them as missing rather than as a stale or invented value). A failed
reading is cached like a good one, so a scrape during an outage waits on Redis's timeout at
most once per cache period."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.domain.ports import StoreUnavailable
from broker.store.gauges import StoreReading

Reader = Callable[[float], StoreReading]  # now -> reading


class ScrapeGauges(Collector):
    def __init__(self, read: Reader, clock: Callable[[], float], *, cache_seconds: float) -> None:
        self._read = read
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._taken_at: float | None = None
        self._reading: StoreReading | None = None

    def reading(self) -> StoreReading | None:
        """The cached reading, or a new one when it is older than the cache period; None
        while Redis does not answer."""
        with self._lock:
            now = self._clock()
            if self._taken_at is None or now - self._taken_at >= self._cache_seconds:
                try:
                    self._reading = self._read(now)
                except StoreUnavailable:
                    self._reading = None
                self._taken_at = now
            return self._reading

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = self.reading()
        yield GaugeMetricFamily(
            "errand_redis_up",
            "1 when Redis answered the last reading of these gauges, 0 when it did not",
            value=0 if reading is None else 1,
        )
        if reading is None:
            return
        yield GaugeMetricFamily(
            "errand_grants_live",
            "Grants that have not expired and were not revoked one by one (revoke-all "
            "cuts them at once; its clean-up removes them here)",
            value=reading.live_grants,
        )
        tasks = GaugeMetricFamily("errand_tasks", "Tasks by state", labels=["state"])
        for state, count in reading.tasks.items():
            tasks.add_metric([state], count)
        yield tasks
        jobs = GaugeMetricFamily(
            "errand_jobs", "Worker jobs in RQ's queue and registries, by state", labels=["state"]
        )
        for state, count in reading.jobs.items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "errand_grants_live_after_task_end",
            "Grants still held by tasks completed longer ago than the reconcile period "
            "(should be 0: the worker revokes a completed task's grants)",
            value=reading.grants_live_after_task_end,
        )
        yield GaugeMetricFamily(
            "errand_workers_reporting",
            "Workers that reported in within the last hour",
            value=reading.workers_reporting,
        )
        if reading.newest_heartbeat is not None:
            yield GaugeMetricFamily(
                "errand_worker_last_heartbeat_timestamp_seconds",
                "Unix time of the latest report of any worker (its own clock)",
                value=reading.newest_heartbeat,
            )


def describe_names() -> set[str]:
    """Every metric name ScrapeGauges can export (docs and the alert-rule test use it)."""
    return {
        "errand_redis_up",
        "errand_grants_live",
        "errand_tasks",
        "errand_jobs",
        "errand_grants_live_after_task_end",
        "errand_workers_reporting",
        "errand_worker_last_heartbeat_timestamp_seconds",
    }
