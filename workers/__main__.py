"""`python -m workers`: an RQ worker (with the scheduler) plus the periodic sweep trigger.

`errand worker` replaces its own process with this one (broker/cli/processes.py): broker/
never imports workers/."""

from __future__ import annotations

import logging
import sys
import threading
import time

from rq import Worker

from broker.errors import BrokerError
from broker.jobs import QUEUE_NAME, SWEEP_FUNCTION, SWEEP_JOB_ID
from broker.logging_json import SweepAtDebug, configure_logging
from broker.settings import load_settings
from broker.store import keys
from workers.context import services

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
    stop = threading.Event()
    threading.Thread(
        target=_sweep_trigger, args=(settings.sweep_interval_seconds, stop), daemon=True
    ).start()
    worker = Worker([QUEUE_NAME], connection=svc.rq_redis)
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
