"""build_tracer(): the Tracer port (broker/domain/ports.py) for this process.

Off unless ERRAND_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT) is set, and then free: the
no-op tracer is returned and OpenTelemetry is never imported (tests/unit/test_tracing.py
checks a fresh interpreter). With an endpoint, broker/tracing_otel.py is imported here, and
only here: the `otel` extra is optional."""

from __future__ import annotations

import importlib

from broker.domain.ports import NO_TRACER, Tracer
from broker.errors import BrokerError
from broker.settings_observability import ObservabilitySettings


class TracingUnavailable(BrokerError):
    """An OTLP endpoint is configured but OpenTelemetry is not installed."""


def build_tracer(settings: ObservabilitySettings) -> Tracer:
    if not settings.otlp_endpoint:
        return NO_TRACER
    try:
        # By name, at run time: with tracing off this module never loads OpenTelemetry.
        adapter = importlib.import_module("broker.tracing_otel")
    except ImportError as err:
        raise TracingUnavailable(
            "ERRAND_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'errand[otel]' (or unset it)"
        ) from err
    tracer: Tracer = adapter.OtelTracer.to_collector(
        settings.otlp_endpoint, settings.otel_service_name
    )
    return tracer
