"""The worker's own /metrics (ERRAND_WORKER_METRICS_BIND): what this worker's processes
counted (the worker, its work horses, its scheduler), aggregated from its multiprocess
directory at each scrape. The Redis gauges are the web's (/metrics of the broker); this one
serves counters only, so a sum over both never counts a gauge twice."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from broker.settings_observability import parse_bind


def serve_worker_metrics(bind: str) -> None:
    """Serve in a daemon thread of this process; raises OSError if the port is taken."""
    host, port = parse_bind(bind)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
