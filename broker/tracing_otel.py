"""The Tracer port on OpenTelemetry: spans exported over OTLP/HTTP (protobuf) in batches.

Imported only when an OTLP endpoint is configured (broker/tracing.py). A span carries its
step's name and, if the step raised, the exception's type name: never its message, which
may quote a claim value, and never a token. The process's global tracer provider is left
alone: only Errand's own spans go to the collector."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Status, StatusCode


class OtelTracer:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("errand")

    @classmethod
    def to_collector(cls, endpoint: str, service_name: str) -> OtelTracer:
        """OTLP/HTTP to `<endpoint>/v1/traces`, as OTEL_EXPORTER_OTLP_ENDPOINT means it.
        The batch processor's OTEL_BSP_* variables apply (export delay, queue size)."""
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        return cls.with_processor(BatchSpanProcessor(exporter), service_name)

    @classmethod
    def with_processor(cls, processor: SpanProcessor, service_name: str = "errand") -> OtelTracer:
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def with_exporter(cls, exporter: SpanExporter) -> OtelTracer:
        """Spans handed to `exporter` as each ends (tests use the in-memory exporter)."""
        return cls.with_processor(SimpleSpanProcessor(exporter))

    def span(self, name: str) -> AbstractContextManager[object]:
        return self._span(name)

    @contextmanager
    def _span(self, name: str) -> Iterator[object]:
        with self._tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as err:
                # The type only: a refusal's or a fault's message may quote what it compared.
                span.set_status(Status(StatusCode.ERROR, type(err).__name__))
                span.set_attribute("errand.error", type(err).__name__)
                raise

    def flush(self, timeout_millis: int = 5000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.provider.shutdown()
