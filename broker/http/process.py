"""The web process's Runtime (broker/runtime.py), for the views that need more than the
domain's Services: readiness, the configuration reload, the proxy settings."""

from __future__ import annotations

from flask import current_app

from broker.runtime import Runtime


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["errand"]
    return found
