"""Many live grants, fast, for benchmarks and load tests: grant writes through the real
grant-write script (lua/save_grant.lua), queued on a pipeline instead of one round trip
each. Not part of the broker: nothing in it is a path a token takes.

    from scripts._bulk import BulkGrantWriter     # or `from _bulk import …` from scripts/
    BulkGrantWriter(client, audit_maxlen=1000).save_many(grants, now=now)"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from broker.domain.models import Grant
from broker.store import lua_scripts
from broker.store.connection import store_errors
from broker.store.grants import save_grant_call


class BulkGrantWriter:
    def __init__(self, client: redis.Redis, *, audit_maxlen: int) -> None:
        self._r = client
        self._audit_maxlen = str(audit_maxlen)
        self._save = client.register_script(lua_scripts.SAVE_GRANT)

    def save_many(self, grants: Sequence[Grant], *, now: int, batch: int = 2000) -> None:
        """Write every grant with no replay entry, no live-grant quota and an empty audit
        event, `batch` scripts per round trip. A refusal (a completed task, a moved epoch)
        is not reported: check what Redis holds if it matters."""
        with store_errors():
            pipe = self._r.pipeline(transaction=False)
            for i, grant in enumerate(grants, 1):
                script_keys, args = save_grant_call(
                    grant, replay=None, audit={}, now=now, quota=0, audit_maxlen=self._audit_maxlen
                )
                self._save(keys=script_keys, args=args, client=pipe)
                if i % batch == 0:
                    pipe.execute()
            pipe.execute()
