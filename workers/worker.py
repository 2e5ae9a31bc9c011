"""ErrandWorker: RQ's forking Worker, plus what Errand needs of it.

- Each work horse counts into its worker's metric files (broker/metrics.py
  enter_work_horse), so the jobs' audit events reach the worker's /metrics.
- The worker reports in (store/gauges.py heartbeat) from RQ's own loop: at each heartbeat
  RQ sends, which it does between jobs, while a job runs, and at least every
  ERRAND_WORKER_HEARTBEAT_SECONDS while idle (the blocking dequeue's timeout is set from
  it). A worker whose loop is stuck therefore stops reporting, and /readyz notices."""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import Worker

from broker.domain.ports import StoreUnavailable
from broker.metrics import enter_work_horse
from broker.store.gauges import RedisGauges

log = logging.getLogger("errand.worker")

# RQ blocks on the queue for worker_ttl - 15 seconds, then sends a heartbeat.
_RQ_DEQUEUE_MARGIN = 15


class ErrandWorker(Worker):
    def __init__(
        self, *args: Any, gauges: RedisGauges, heartbeat_seconds: int, **kwargs: Any
    ) -> None:
        kwargs.setdefault("worker_ttl", heartbeat_seconds + _RQ_DEQUEUE_MARGIN)
        super().__init__(*args, **kwargs)
        self._gauges = gauges

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        try:
            self._gauges.heartbeat(self.name, now=time.time())
        except StoreUnavailable as err:  # RQ's own calls will fail and reconnect too
            log.warning("could not report in: %s", type(err).__name__)

    def main_work_horse(self, job: Any, queue: Any) -> None:
        enter_work_horse()
        super().main_work_horse(job, queue)
