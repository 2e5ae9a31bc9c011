"""Redis side of incident response: revoke-all epochs, bulk revocation, the revocation feed
that resource servers poll, and the stream of signed revocation records.

Revoke-all is a cut, not a scan: one INCR of the epoch makes every older grant inactive for
introspection at once (domain/introspection.py compares epochs), and refuses grant writes
that started before it (the Lua write checks the epoch). Workers then remove the old grants
in batches; they clean up, they are not the safety."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from broker.store import grant_steps, keys, lua_scripts
from broker.store.audit_stream import event_json
from broker.store.connection import NO_WAIT, ReplicaWait, store_errors

_CURSOR = re.compile(r"0|[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True)
class FeedPage:
    cursor: str
    epoch: int
    entries: list[dict[str, Any]]
    more: bool


class RedisRevocationStore:
    def __init__(
        self, client: redis.Redis, *, audit_maxlen: int, wait: ReplicaWait = NO_WAIT
    ) -> None:
        self._r = client
        self._wait = wait
        self._audit_maxlen = str(audit_maxlen)
        self._revoke_all = client.register_script(lua_scripts.REVOKE_ALL)
        self._drop = client.register_script(lua_scripts.DROP_GRANTS)

    # -- revoke-all ---------------------------------------------------------------------------
    @store_errors()
    def revoke_all(self, *, now: int, audit: Mapping[str, Any]) -> tuple[int, int]:
        """Bump the epoch; returns (new epoch, grants live at the cut)."""
        result = self._wait.run(
            self._revoke_all,
            keys=[keys.EPOCH, keys.EPOCH_LOG, keys.AUDIT_STREAM, keys.FANOUTS, keys.EXPIRY_INDEX],
            args=[now, self._audit_maxlen, event_json(audit)],
            what="revoke-all",
        )
        return int(result[0]), int(result[1])

    @store_errors()
    def current_epoch(self) -> int:
        return int(self._r.get(keys.EPOCH) or 0)

    @store_errors()
    def fanout_batch(self, epoch: int, offset: int, batch: int) -> tuple[int, int, int]:
        """One page of the expiry index, from `offset`: grants stamped before `epoch` are
        dropped (store/grant_steps.py; they are already dead by the epoch), along with the
        index entries of grants that are gone. Returns (examined, revoked, survivors)."""
        members = [str(m) for m in self._r.zrange(keys.EXPIRY_INDEX, offset, offset + batch - 1)]
        refs = [r for r in (grant_steps.parse_member(m) for m in members) if r is not None]
        outcome = grant_steps.drop(self._drop, refs, epoch_cut=epoch)
        survivors = sum(1 for status, _ in outcome.values() if status == grant_steps.KEPT)
        revoked = sum(1 for status, _ in outcome.values() if status == grant_steps.DROPPED)
        leftovers = [r for r in refs if outcome[r.jti][0] != grant_steps.KEPT]
        grant_steps.unindex(self._r, leftovers, task_index_too=True)
        malformed = [m for m in members if grant_steps.parse_member(m) is None]
        if malformed:
            self._r.zrem(keys.EXPIRY_INDEX, *malformed)
        return len(members), revoked, survivors

    @store_errors()
    def record_fanout_progress(self, epoch: int, fields: Mapping[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(keys.fanout_progress(epoch), mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(keys.fanout_progress(epoch), 7 * 86400)
        if fields.get("done") == 1:
            pipe.zrem(keys.FANOUTS, epoch)
        pipe.execute()

    @store_errors()
    def fanout_progress(self, epoch: int) -> dict[str, str]:
        return dict(cast(Mapping[str, str], self._r.hgetall(keys.fanout_progress(epoch))))

    @store_errors()
    def pending_fanouts(self, older_than: float) -> list[int]:
        raw = cast(list[str], self._r.zrangebyscore(keys.FANOUTS, "-inf", older_than))
        return [int(e) for e in raw]

    # -- bulk by index ------------------------------------------------------------------------
    @staticmethod
    def index_key(kind: str, value: str) -> str:
        return {
            "task": keys.task_index,
            "identity": keys.identity_index,
        }[kind](value)

    @store_errors()
    def index_members(self, index_key: str, batch: int) -> list[str]:
        return list(cast(list[str], self._r.zrange(index_key, 0, batch - 1)))

    @store_errors()
    def live_grant_page(self, offset: int, batch: int) -> list[str]:
        members = cast(list[str], self._r.zrange(keys.EXPIRY_INDEX, offset, offset + batch - 1))
        return [m.split(" ", 1)[0] for m in members]

    @store_errors()
    def revoke_many(
        self, jtis: list[str], *, publish_each: bool, issuer_id: str = "", index: str | None = None
    ) -> int:
        """Revoke a batch of grants (store/grant_steps.py: read, publish, drop, unindex,
        then the delegation hops below them); returns how many live grants it revoked. Every
        jti passed leaves `index` (the index it was read from), expired ones included, so a
        caller's loop ends."""
        if not jtis:
            return 0
        live = grant_steps.read_refs(self._r, jtis)
        chosen = list(live.values())
        if issuer_id:
            issuers = self._issuers(list(live))
            chosen = [r for r in chosen if issuers.get(r.jti) == issuer_id]
        if publish_each and chosen:
            grant_steps.publish(self._r, feed=[("jti", r.jti, r.exp, r.exp) for r in chosen])
        outcome = grant_steps.drop(self._drop, chosen, issuer_id=issuer_id, wait=self._wait)
        dropped = [ref for status, ref in outcome.values() if status == grant_steps.DROPPED]
        grant_steps.unindex(self._r, dropped)
        # The delegation hops below them, published one by one whatever publish_each says:
        # they are other identities'. Counted, so a caller paging by offset skips nothing.
        below = grant_steps.cascade(self._r, self._drop, [r.jti for r in dropped], wait=self._wait)
        if index:
            self._r.zrem(index, *jtis)
        return len(dropped) + len(below)

    def _issuers(self, jtis: list[str]) -> dict[str, str]:
        pipe = self._r.pipeline(transaction=False)
        for jti in jtis:
            pipe.hget(keys.grant(jti), "u")
        return {j: str(u) for j, u in zip(jtis, pipe.execute(), strict=True) if u}

    # -- the feed -------------------------------------------------------------------------------
    @staticmethod
    def valid_cursor(cursor: str) -> bool:
        return _CURSOR.fullmatch(cursor) is not None

    def read_feed(self, since: str, *, limit: int, now: int, margin: int = 60) -> FeedPage:
        """Entries after `since`; an entry is dropped only `margin` seconds after its exp,
        so a verifier with clock leeway still hears of a token that has just expired."""
        start = "-" if since == "0" else "(" + since
        with store_errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.xrange(keys.REVOCATION_FEED, min=start, max="+", count=limit + 1)
            pipe.get(keys.EPOCH)
            rows, epoch = pipe.execute()
        more = len(rows) > limit
        rows = rows[:limit]
        entries = []
        for _, f in rows:
            try:
                exp = int(f["x"])
                if exp + margin < now:
                    continue  # every token it covered has expired, leeway included
                entry = {"kind": f["k"], "value": f["v"], "not_after": int(f["n"]), "exp": exp}
                if f.get("p"):
                    entry["parent"] = f["p"]  # a delegation hop revoked with the grant above it
                entries.append(entry)
            except (KeyError, ValueError):
                continue
        cursor = rows[-1][0] if rows else since
        return FeedPage(cursor=cursor, epoch=int(epoch or 0), entries=entries, more=more)

    @store_errors()
    def trim_feed(self, older_than_seconds: int, now: int) -> None:
        min_id = max(0, (now - older_than_seconds) * 1000)
        self._r.xtrim(keys.REVOCATION_FEED, minid=str(min_id), approximate=True)

    # -- signed revocation records ------------------------------------------------------------
    @store_errors()
    def append_evidence(self, record_id: str, jws: str) -> None:
        self._r.xadd(
            keys.EVIDENCE_STREAM,
            {"id": record_id, "jws": jws},
            maxlen=100_000,
            approximate=True,
        )

    @store_errors()
    def list_evidence(self, limit: int) -> list[dict[str, str]]:
        rows = cast(
            list[tuple[str, dict[str, str]]], self._r.xrevrange(keys.EVIDENCE_STREAM, count=limit)
        )
        return [
            {"stream_id": sid, "id": f.get("id", ""), "jws": f.get("jws", "")} for sid, f in rows
        ]
