"""Fixtures of the key-ring tests: the shared key records and the KEK that seals them."""

from __future__ import annotations

import base64

import pytest

from broker.tokens.keyrecord import new_kek
from tests.support.keyrecords import MemoryKeyRecords


@pytest.fixture
def store() -> MemoryKeyRecords:
    return MemoryKeyRecords()


@pytest.fixture
def kek() -> bytes:
    return base64.b64decode(new_kek())
