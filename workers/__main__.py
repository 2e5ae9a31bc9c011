"""`python -m workers`: an RQ worker (with the scheduler) plus the periodic sweep trigger.

`errand worker` replaces its own process with this one (broker/cli/processes.py): broker/
never imports workers/."""

from __future__ import annotations

import logging
import sys
import threading
import time

# First, before anything imports prometheus_client (importing broker does): the work horses'
# counts go to files in this directory (broker/metrics.py).
from workers.metrics_dir import prepare_metrics_dir, remove_metrics_dir

_made_metrics_dir = prepare_metrics_dir()

from broker.errors import BrokerError  # noqa: E402
from broker.jobs import QUEUE_NAME, SWEEP_FUNCTION, SWEEP_JOB_ID  # noqa: E402
from broker.logging_json import SweepAtDebug, configure_logging  # noqa: E402
from broker.settings import load_settings  # noqa: E402
from broker.store import keys  # noqa: E402
from workers.context import services  # noqa: E402
from workers.metrics_server import serve_worker_metrics  # noqa: E402
from workers.worker import ErrandWorker  # noqa: E402

log = logging.getLogger("errand.worker")


def _sweep_trigger(interval: float, stop: threading.Event) -> None:
    """Enqueue the sweep every interval; a Redis lock keeps it to one per interval fleet-wide."""
    svc = services()
    redis = svc.redis
    while not stop.wait(interval):
        try:
            if redis.set(keys.SWEEP_LOCK, "1", nx=True, px=max(int(interval * 1000) - 50, 100)):
                svc.jobs.schedule_sweep()
        except Exception as err:  # Redis down: try again next interval
            log.warning("could not enqueue sweep: %s", type(err).__name__)


def main() -> None:
    configure_logging()
    # RQ logs each job it runs at INFO; the periodic sweep's lines are routine, so DEBUG.
    logging.getLogger("rq.worker").addFilter(SweepAtDebug(SWEEP_JOB_ID, SWEEP_FUNCTION))
    settings = load_settings()
    svc = services()
    observability = settings.observability
    if observability.worker_metrics_bind:
        try:
            serve_worker_metrics(observability.worker_metrics_bind)
        except OSError as err:
            raise BrokerError(
                f"ERRAND_WORKER_METRICS_BIND {observability.worker_metrics_bind}: {err.strerror}"
            ) from err
    stop = threading.Event()
    threading.Thread(
        target=_sweep_trigger, args=(settings.sweep_interval_seconds, stop), daemon=True
    ).start()
    worker = ErrandWorker(
        [QUEUE_NAME],
        connection=svc.rq_redis,
        gauges=svc.gauges,
        heartbeat_seconds=observability.worker_heartbeat_seconds,
    )
    try:
        while True:
            try:
                worker.work(with_scheduler=True)
                break
            except Exception as err:  # Redis went away: wait and reconnect, no restart needed
                log.warning("worker lost Redis (%s); retrying in 2 s", type(err).__name__)
                time.sleep(2)
    finally:
        stop.set()


if __name__ == "__main__":
    try:
        main()
    except BrokerError as err:  # bad settings or configuration: one line, as `errand` says it
        sys.exit(f"errand: {err.description}")
    finally:
        remove_metrics_dir(_made_metrics_dir)
