"""fanout_epoch(epoch): remove every grant a revoke-all cut ended, in batches.

Introspection already treats those grants as dead (the epoch check); this job frees the
memory and records progress. It is idempotent: a retry or a second worker re-scans."""

from __future__ import annotations

import logging

from broker.domain.bulk_revocation import fanout
from workers.context import services

log = logging.getLogger(__name__)


def fanout_epoch(epoch: int) -> dict[str, int]:
    totals = fanout(services(), int(epoch))
    log.info("revoke-all clean-up finished", extra={"epoch": epoch, **totals})
    return totals
