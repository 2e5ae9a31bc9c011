"""services(): the Runtime built once per worker process (broker/runtime.py): the domain's
Services plus the Redis clients and settings the jobs and the sweep trigger use."""

from __future__ import annotations

from functools import cache

from broker.runtime import Runtime
from broker.services import build_services
from broker.settings import load_settings


@cache
def services() -> Runtime:
    return build_services(load_settings())
