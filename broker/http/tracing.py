"""A span per HTTP request, as the parent of the exchange's step spans (broker/tracing.py).

Registered only when tracing is on: with the no-op tracer the app has no hook at all. The
span is named by method and endpoint (a fixed set), never by path or query."""

from __future__ import annotations

from contextlib import ExitStack

from flask import Flask, g, request

from broker.domain.ports import NO_TRACER, Tracer


def install_request_spans(app: Flask, tracer: Tracer) -> None:
    if tracer is NO_TRACER:
        return

    @app.before_request
    def _open_span() -> None:
        spans = ExitStack()
        spans.enter_context(tracer.span(f"{request.method} {request.endpoint or 'unknown'}"))
        g.errand_spans = spans

    @app.teardown_request
    def _close_span(_error: BaseException | None) -> None:
        spans = g.pop("errand_spans", None)
        if spans is not None:
            spans.close()
