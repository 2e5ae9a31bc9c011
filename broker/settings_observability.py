"""The observability settings: the worker's metrics exporter and heartbeat, what /readyz
requires, the scrape-time gauges' cache and OpenTelemetry tracing (docs/observability.md).

Read by broker/settings.py's load_settings, the only reader of the environment; kept here so
the broker's core settings stay one screen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.errors import BrokerError


class ObservabilitySettingsError(BrokerError):
    """A contradictory observability setting; the process refuses to start."""


@dataclass(frozen=True)
class ObservabilitySettings:
    # ERRAND_WORKER_METRICS_BIND: host:port where `errand worker` serves its own /metrics
    # (what its jobs counted). Empty: no exporter. The web's /metrics never holds those counts.
    worker_metrics_bind: str = ""
    # ERRAND_WORKER_HEARTBEAT_SECONDS: how often a worker reports in (from RQ's own loop)
    worker_heartbeat_seconds: int = 10
    # ERRAND_READY_WORKER_MAX_AGE_SECONDS: /readyz answers 503 when no worker has reported in
    # for this long. 0: /readyz does not look at workers.
    ready_worker_max_age_seconds: int = 60
    # ERRAND_READY_REQUIRES_RELOAD_OK: "1": /readyz answers 503 while the last configuration
    # reload of the answering process was refused. "0": it only reports it.
    ready_requires_reload_ok: bool = True
    # ERRAND_METRICS_CACHE_SECONDS: the gauges read from Redis at scrape time are reused for
    # this long (per web process), so frequent scrapes cost Redis nothing more.
    metrics_cache_seconds: float = 5.0
    # ERRAND_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT): base URL of an OTLP/HTTP
    # collector; spans go to <endpoint>/v1/traces. Empty: no tracing, nothing imported.
    otlp_endpoint: str = ""
    # OTEL_SERVICE_NAME: the service.name resource attribute of the spans
    otel_service_name: str = "errand"


def load_observability_settings(env: Mapping[str, str]) -> ObservabilitySettings:
    try:
        settings = ObservabilitySettings(
            worker_metrics_bind=env.get("ERRAND_WORKER_METRICS_BIND", "").strip(),
            worker_heartbeat_seconds=int(env.get("ERRAND_WORKER_HEARTBEAT_SECONDS", "10")),
            ready_worker_max_age_seconds=int(env.get("ERRAND_READY_WORKER_MAX_AGE_SECONDS", "60")),
            ready_requires_reload_ok=env.get("ERRAND_READY_REQUIRES_RELOAD_OK", "1") == "1",
            metrics_cache_seconds=float(env.get("ERRAND_METRICS_CACHE_SECONDS", "5")),
            otlp_endpoint=(
                env.get("ERRAND_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
            ).strip(),
            otel_service_name=env.get("OTEL_SERVICE_NAME", "").strip() or "errand",
        )
    except ValueError as err:
        raise ObservabilitySettingsError(f"bad numeric environment setting: {err}") from err
    if settings.worker_metrics_bind:
        parse_bind(settings.worker_metrics_bind)
    if not 1 <= settings.worker_heartbeat_seconds <= 300:
        raise ObservabilitySettingsError("ERRAND_WORKER_HEARTBEAT_SECONDS must be 1 to 300")
    age = settings.ready_worker_max_age_seconds
    # A worker reports in every heartbeat: a smaller age would make /readyz flap.
    if age < 0 or (age and age < 2 * settings.worker_heartbeat_seconds):
        raise ObservabilitySettingsError(
            "ERRAND_READY_WORKER_MAX_AGE_SECONDS must be 0 (off) or at least twice "
            f"ERRAND_WORKER_HEARTBEAT_SECONDS ({settings.worker_heartbeat_seconds})"
        )
    if not 0 <= settings.metrics_cache_seconds <= 300:
        raise ObservabilitySettingsError("ERRAND_METRICS_CACHE_SECONDS must be 0 to 300")
    if settings.otlp_endpoint and not settings.otlp_endpoint.startswith(("http://", "https://")):
        raise ObservabilitySettingsError(
            "ERRAND_OTLP_ENDPOINT must be an http:// or https:// URL (OTLP over HTTP)"
        )
    return settings


def parse_bind(bind: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9464`) of ERRAND_WORKER_METRICS_BIND."""
    host, sep, port = bind.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ObservabilitySettingsError(
            f"ERRAND_WORKER_METRICS_BIND: {bind!r} is not host:port (e.g. 0.0.0.0:9464)"
        )
    return host, int(port)
