"""Redis side of incident response: revoke-all epochs, bulk revocation, the revocation feed
that resource servers poll, and the stream of signed revocation records.

Revoke-all is a cut, not a scan: one INCR of the epoch makes every older grant inactive for
introspection at once (domain/introspection.py compares epochs), and refuses grant writes
that started before it (the Lua write checks the epoch). Workers then remove the old grants
in batches; they clean up, they are not the safety."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import RedisError

from broker.domain.ports import StoreUnavailable
from broker.store import keys

# KEYS: epoch, epoch log, audit, fanouts, expiry. ARGV: now, audit maxlen, audit json template
_REVOKE_ALL = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], redis.call('TIME')[1]) end
local epoch = redis.call('INCR', KEYS[1])
local live = redis.call('ZCOUNT', KEYS[5], '(' .. ARGV[1], '+inf')
local event = cjson.decode(ARGV[3])
event['epoch'] = epoch
event['live_grants'] = live
redis.call('HSET', KEYS[2], epoch, cjson.encode({at = tonumber(ARGV[1]), live = live}))
redis.call('ZADD', KEYS[4], ARGV[1], epoch)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', cjson.encode(event))
return {epoch, live}
"""

# Revoke a batch of grants. KEYS: expiry idx, feed, and optionally the index the jtis were
# read from (every passed jti leaves it, expired ones included, so a caller's loop ends).
# ARGV: '1' to publish one feed entry per grant (when no coarser entry covers them),
# issuer filter ('' for any), then jtis.
_REVOKE_MANY = """
local n = 0
for i = 3, #ARGV do
  local jti = ARGV[i]
  if KEYS[3] then redis.call('ZREM', KEYS[3], jti) end
  local gk = 'errand:grant:' .. jti
  local g = redis.call('HMGET', gk, 't', 'i', 'e', 'u')
  if g[1] and (ARGV[2] == '' or ARGV[2] == g[4]) then
    redis.call('DEL', gk)
    redis.call('ZREM', 'errand:task:' .. g[1], jti)
    redis.call('ZREM', 'errand:ident:' .. g[2], jti)
    redis.call('ZREM', KEYS[1], jti .. ' ' .. g[1] .. ' ' .. g[2])
    if ARGV[1] == '1' then
      redis.call('XADD', KEYS[2], '*', 'k', 'jti', 'v', jti, 'n', g[3], 'x', g[3])
    end
    n = n + 1
  end
end
return n
"""

# One revoke-all clean-up batch. KEYS: expiry idx. ARGV: epoch, offset, batch size.
# Grants stamped with an older epoch are removed; newer ones are skipped (survivors).
_FANOUT_BATCH = """
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local revoked, survivors = 0, 0
local epoch = tonumber(ARGV[1])
for _, m in ipairs(members) do
  local jti, task, ident = string.match(m, '^(%S+) (%S+) (%S+)$')
  local gk = 'errand:grant:' .. (jti or '')
  local p = redis.call('HGET', gk, 'p')
  if jti and p and tonumber(p) >= epoch then
    survivors = survivors + 1
  else
    if jti then
      redis.call('DEL', gk)
      redis.call('ZREM', 'errand:task:' .. task, jti)
      redis.call('ZREM', 'errand:ident:' .. ident, jti)
    end
    redis.call('ZREM', KEYS[1], m)
    if p then revoked = revoked + 1 end
  end
end
return {#members, revoked, survivors}
"""

_CURSOR = re.compile(r"0|[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True)
class FeedPage:
    cursor: str
    epoch: int
    entries: list[dict[str, Any]]
    more: bool


class RedisRevocationStore:
    def __init__(self, client: redis.Redis, *, audit_maxlen: int) -> None:
        self._r = client
        self._audit_maxlen = str(audit_maxlen)
        self._revoke_all = client.register_script(_REVOKE_ALL)
        self._revoke_many = client.register_script(_REVOKE_MANY)
        self._fanout = client.register_script(_FANOUT_BATCH)

    def _guard(self, fn: Any) -> Any:
        try:
            return fn()
        except RedisError as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err

    # -- revoke-all ---------------------------------------------------------------------------
    def revoke_all(self, *, now: int, audit: Mapping[str, Any]) -> tuple[int, int]:
        """Bump the epoch; returns (new epoch, grants live at the cut)."""
        result = self._guard(
            lambda: self._revoke_all(
                keys=[
                    keys.EPOCH,
                    keys.EPOCH_LOG,
                    keys.AUDIT_STREAM,
                    keys.FANOUTS,
                    keys.EXPIRY_INDEX,
                ],
                args=[now, self._audit_maxlen, json.dumps(audit, separators=(",", ":"))],
            )
        )
        return int(result[0]), int(result[1])

    def current_epoch(self) -> int:
        return int(self._guard(lambda: self._r.get(keys.EPOCH)) or 0)

    def fanout_batch(self, epoch: int, offset: int, batch: int) -> tuple[int, int, int]:
        """Returns (examined, revoked, survivors)."""
        res = self._guard(
            lambda: self._fanout(keys=[keys.EXPIRY_INDEX], args=[epoch, offset, batch])
        )
        return int(res[0]), int(res[1]), int(res[2])

    def record_fanout_progress(self, epoch: int, fields: Mapping[str, Any]) -> None:
        def write() -> None:
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(keys.fanout_progress(epoch), mapping={k: str(v) for k, v in fields.items()})
            pipe.expire(keys.fanout_progress(epoch), 7 * 86400)
            if fields.get("done") == 1:
                pipe.zrem(keys.FANOUTS, epoch)
            pipe.execute()

        self._guard(write)

    def fanout_progress(self, epoch: int) -> dict[str, str]:
        return dict(self._guard(lambda: self._r.hgetall(keys.fanout_progress(epoch))))

    def pending_fanouts(self, older_than: float) -> list[int]:
        raw = self._guard(lambda: self._r.zrangebyscore(keys.FANOUTS, "-inf", older_than))
        return [int(e) for e in raw]

    # -- bulk by index ------------------------------------------------------------------------
    @staticmethod
    def index_key(kind: str, value: str) -> str:
        return {
            "task": keys.task_index,
            "identity": keys.identity_index,
        }[kind](value)

    def index_members(self, index_key: str, batch: int) -> list[str]:
        return list(self._guard(lambda: self._r.zrange(index_key, 0, batch - 1)))

    def live_grant_page(self, offset: int, batch: int) -> list[str]:
        members = self._guard(lambda: self._r.zrange(keys.EXPIRY_INDEX, offset, offset + batch - 1))
        return [m.split(" ", 1)[0] for m in members]

    def revoke_many(
        self, jtis: list[str], *, publish_each: bool, issuer_id: str = "", index: str | None = None
    ) -> int:
        if not jtis:
            return 0
        index_keys = [index] if index else []
        return int(
            self._guard(
                lambda: self._revoke_many(
                    keys=[keys.EXPIRY_INDEX, keys.REVOCATION_FEED, *index_keys],
                    args=["1" if publish_each else "0", issuer_id, *jtis],
                )
            )
        )

    def publish(self, kind: str, value: str, *, not_after: int, expires: int) -> None:
        self._guard(
            lambda: self._r.xadd(
                keys.REVOCATION_FEED,
                {"k": kind, "v": value, "n": str(not_after), "x": str(expires)},
            )
        )

    # -- the feed -------------------------------------------------------------------------------
    @staticmethod
    def valid_cursor(cursor: str) -> bool:
        return _CURSOR.fullmatch(cursor) is not None

    def read_feed(self, since: str, *, limit: int, now: int, margin: int = 60) -> FeedPage:
        """Entries after `since`; an entry is dropped only `margin` seconds after its exp,
        so a verifier with clock leeway still hears of a token that has just expired."""
        start = "-" if since == "0" else "(" + since

        def read() -> tuple[Any, Any]:
            pipe = self._r.pipeline(transaction=False)
            pipe.xrange(keys.REVOCATION_FEED, min=start, max="+", count=limit + 1)
            pipe.get(keys.EPOCH)
            return tuple(pipe.execute())  # type: ignore[return-value]

        rows, epoch = self._guard(read)
        more = len(rows) > limit
        rows = rows[:limit]
        entries = []
        for _, f in rows:
            try:
                exp = int(f["x"])
                if exp + margin < now:
                    continue  # every token it covered has expired, leeway included
                entries.append(
                    {"kind": f["k"], "value": f["v"], "not_after": int(f["n"]), "exp": exp}
                )
            except (KeyError, ValueError):
                continue
        cursor = rows[-1][0] if rows else since
        return FeedPage(cursor=cursor, epoch=int(epoch or 0), entries=entries, more=more)

    def trim_feed(self, older_than_seconds: int, now: int) -> None:
        min_id = max(0, (now - older_than_seconds) * 1000)
        self._guard(
            lambda: self._r.xtrim(keys.REVOCATION_FEED, minid=str(min_id), approximate=True)
        )

    # -- signed revocation records ------------------------------------------------------------
    def append_evidence(self, record_id: str, jws: str) -> None:
        self._guard(
            lambda: self._r.xadd(
                keys.EVIDENCE_STREAM,
                {"id": record_id, "jws": jws},
                maxlen=100_000,
                approximate=True,
            )
        )

    def list_evidence(self, limit: int) -> list[dict[str, str]]:
        rows = self._guard(lambda: self._r.xrevrange(keys.EVIDENCE_STREAM, count=limit))
        return [
            {"stream_id": sid, "id": f.get("id", ""), "jws": f.get("jws", "")} for sid, f in rows
        ]
