"""services(): the Services instance built once per worker process."""

from __future__ import annotations

from functools import cache

from broker.domain.ports import Services
from broker.services import build_services
from broker.settings import load_settings


@cache
def services() -> Services:
    return build_services(load_settings())
