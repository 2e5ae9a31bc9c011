"""Redis implementations of the domain's storage ports.

Every write that makes a token usable happens in one Lua script, so a grant, its indexes,
the replay entry and its audit record exist together or not at all (SECURITY.md: fail
closed). Any Redis fault surfaces as StoreUnavailable, which the HTTP layer turns into a
503 with Retry-After."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError, ResponseError

from broker.domain.models import Grant, GrantState
from broker.domain.ports import PreflightState, StoreUnavailable, WriteRefused
from broker.store import keys

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: grant, task idx, identity idx, expiry idx, epoch, tombstone, replay, audit,
#       identity states, last exchanges, task owner
# ARGV: jti, exp, now, expected epoch, use replay (0/1), replay exat, expiry member,
#       audit maxlen, audit json, live-grant quota (0: none), grant key prefix,
#       then grant field/value pairs (ARGV[13] is the 'i' value: the identity)
# (There is no owner index: an owner's grants are its identities' grants, and the inventory
# knows which identities an owner has. It saves ~130 bytes per live grant.)
_SAVE_GRANT = """
-- Redis does not roll a script back: check every key the writes below touch first, so a
-- command cannot fail half-way and leave a partial grant or a burned jti.
local want = {[1] = 'hash', [2] = 'zset', [3] = 'zset', [4] = 'zset', [8] = 'stream',
              [9] = 'hash', [10] = 'hash', [11] = 'string'}
for i, t in pairs(want) do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= t then
    return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[i] .. ' holds a ' .. have)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('ERRAND_CORRUPT jti reused') end
local rtype = redis.call('TYPE', KEYS[7])['ok']
if ARGV[5] == '1' and rtype ~= 'none' and rtype ~= 'string' then
  return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[7] .. ' holds a ' .. rtype)
end
local me = ARGV[13]
-- A task belongs to the identity that opened it, for its whole life: the owner key is set
-- once and outlives every grant of the task (and, once complete, its tombstone). Checked
-- before the tombstone, so a stranger learns nothing about another identity's task.
local owner = redis.call('GET', KEYS[11])
if owner and owner ~= me then return 'task_foreign' end
if not owner then
  -- A task opened before owners were recorded: its earliest live grant speaks for it.
  local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], '+inf', 'LIMIT', 0, 1)
  local holder = live[1] and redis.call('HGET', ARGV[11] .. live[1], 'i')
  if holder and holder ~= me then return 'task_foreign' end
end
if redis.call('EXISTS', KEYS[6]) == 1 then return 'task_completed' end
-- A suspended or offboarded identity gets nothing, even if the suspension landed a moment ago.
if redis.call('HEXISTS', KEYS[9], me) == 1 then return 'identity_blocked' end
-- A quota of live grants per identity: a runaway agent or CI loop cannot flood Redis.
local quota = tonumber(ARGV[10])
if quota > 0 and redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[3], '+inf') >= quota then
  return 'quota_exceeded'
end
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  -- Redis lost its data: restart the epoch from Redis's own clock, above every epoch it
  -- published before, so the cut never moves backwards. The caller retries once.
  redis.call('SET', KEYS[5], redis.call('TIME')[1], 'NX')
  return 'epoch_changed'
end
-- ARGV[4] is the epoch read when the request arrived: a revoke-all since then refuses.
if epoch ~= ARGV[4] then return 'epoch_changed' end
if ARGV[5] == '1' then
  if not redis.call('SET', KEYS[7], '1', 'NX', 'EXAT', ARGV[6]) then return 'replayed' end
end
local exp = tonumber(ARGV[2])
local ttl = exp - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
redis.call('EXPIREAT', KEYS[1], exp)
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], exp, ARGV[1])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIREAT', KEYS[i], exp) end
end
if not owner then
  redis.call('SET', KEYS[11], me, 'EXAT', exp)
elseif redis.call('TTL', KEYS[11]) < ttl then
  redis.call('EXPIREAT', KEYS[11], exp)
end
redis.call('ZADD', KEYS[4], exp, ARGV[7])
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[8], '*', 'e', ARGV[9])
redis.call('HSET', KEYS[10], me, ARGV[3])
return 'ok'
"""

# KEYS: grant, expiry idx, audit, revocation feed. ARGV: jti, audit maxlen, audit json.
# Index key names are built here from the grant's own fields (prefixes as in store/keys.py).
_REVOKE_GRANT = """
local g = redis.call('HMGET', KEYS[1], 't', 'i', 'e')
if not g[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', 'errand:task:' .. g[1], ARGV[1])
redis.call('ZREM', 'errand:ident:' .. g[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1] .. ' ' .. g[1] .. ' ' .. g[2])
local ev = cjson.decode(ARGV[3])
ev['task'] = g[1]
ev['identity'] = g[2]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', cjson.encode(ev))
redis.call('XADD', KEYS[4], '*', 'k', 'jti', 'v', ARGV[1], 'n', g[3], 'x', g[3])
return {g[1], g[2]}
"""

# KEYS: tombstone, completing, audit, revocation feed, task owner.
# ARGV: ttl, now, audit maxlen, audit json, task id, feed entry expiry, feed cut-off (iat),
#       the completing token's identity
_COMPLETE_TASK = """
-- Only the task's owner ends it, whichever grants of the task a token may name.
local owner = redis.call('GET', KEYS[5])
if owner and owner ~= ARGV[8] then return -1 end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then return 0 end
-- The owner keeps the name as long as the tombstone refuses it to everyone else.
if owner and redis.call('TTL', KEYS[5]) < tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[5], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
redis.call('XADD', KEYS[4], '*', 'k', 'task', 'v', ARGV[5], 'n', ARGV[7], 'x', ARGV[6])
return 1
"""

# KEYS: expiry idx, audit. ARGV: now, batch, audit maxlen, ts
# Removes expired members from every index; the grant hashes have already gone by TTL.
_SWEEP = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(members) do
  local jti, task, ident = string.match(m, '^(%S+) (%S+) (%S+)$')
  if jti then
    redis.call('ZREM', 'errand:task:' .. task, jti)
    redis.call('ZREM', 'errand:ident:' .. ident, jti)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e',
      cjson.encode({ts = tonumber(ARGV[4]), event = 'grant.expired', outcome = 'expired',
                    jti = jti, task = task, identity = ident}))
  end
  redis.call('ZREM', KEYS[1], m)
end
return #members
"""


def _grant_fields(grant: Grant) -> list[str]:
    # Short field names: a live grant should cost well under 1 KiB of Redis memory.
    return [
        "i", grant.identity_id,
        "y", grant.identity_type,
        "o", grant.owner,
        "t", grant.task_id,
        "a", json.dumps(list(grant.audiences), separators=(",", ":")),
        "s", " ".join(grant.scopes),
        "c", grant.client_id,
        "e", str(grant.exp),
        "n", str(grant.iat),
        "u", grant.issuer_id,
        "p", str(grant.epoch),
        "r", grant.purpose,
    ]  # fmt: skip


def _grant_from(jti: str, h: Mapping[str, str]) -> Grant | None:
    try:
        return Grant(
            jti=jti,
            identity_id=h["i"],
            identity_type=h["y"],
            owner=h["o"],
            task_id=h["t"],
            audiences=tuple(json.loads(h["a"])),
            scopes=tuple(h["s"].split()) if h["s"] else (),
            client_id=h["c"],
            exp=int(h["e"]),
            iat=int(h["n"]),
            issuer_id=h["u"],
            epoch=int(h["p"]),
            purpose=h.get("r", ""),
        )
    except (KeyError, ValueError):
        log.error("malformed grant record", extra={"jti": jti})
        return None


def expiry_member(grant: Grant) -> str:
    return f"{grant.jti} {grant.task_id} {grant.identity_id}"


def connect(url: str, *, timeout: float, decode: bool = True) -> redis.Redis:
    """A client with short timeouts, so an outage is a quick 503, not a hung worker."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )


# KEYS: epoch. The revoke-all epoch starts at Redis's clock (seconds), not at 0, so that after
# a loss of Redis data it starts again above every epoch resource servers have seen.
_ENSURE_EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return tonumber(redis.call('GET', KEYS[1])) end
local now = redis.call('TIME')[1]
redis.call('SET', KEYS[1], now)
return tonumber(now)
"""


# Everything the exchange reads before deciding, in one round trip.
# KEYS: epoch, replay key, task tombstone, identity states, the identity's rate counter,
#       task owner.
# ARGV: identity id ('' for none), rate window seconds (0: do not count).
_PREFLIGHT = """
local epoch = redis.call('GET', KEYS[1])
local replayed = redis.call('EXISTS', KEYS[2])
local done = redis.call('EXISTS', KEYS[3])
local owner = redis.call('GET', KEYS[6])
local state = false
local n, ttl = 0, 0
if ARGV[1] ~= '' then
  state = redis.call('HGET', KEYS[4], ARGV[1])
  -- A replay of a spent token is refused without counting: whoever holds a victim's used
  -- token must not be able to spend the victim's budget with it.
  if tonumber(ARGV[2]) > 0 and replayed == 0 then
    redis.call('SET', KEYS[5], 0, 'EX', ARGV[2], 'NX')  -- starts a fixed window
    n = redis.call('INCR', KEYS[5])  -- keeps the window's TTL
    ttl = redis.call('TTL', KEYS[5])
  end
end
return {epoch or false, replayed, done, state or false, n, ttl, owner or false}
"""


class RedisGrantStore:
    def __init__(self, client: redis.Redis, *, audit_maxlen: int) -> None:
        self._r = client
        self._audit_maxlen = str(audit_maxlen)
        self._save = client.register_script(_SAVE_GRANT)
        self._revoke = client.register_script(_REVOKE_GRANT)
        self._complete = client.register_script(_COMPLETE_TASK)
        self._sweep = client.register_script(_SWEEP)
        self._ensure_epoch = client.register_script(_ENSURE_EPOCH)
        self._preflight = client.register_script(_PREFLIGHT)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except RedisError as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err

    def _call(self, fn: Callable[[], T]) -> T:
        with self._guard():
            return fn()

    def ensure_epoch(self) -> int:
        """Create the epoch if Redis has none (first start, or after data loss)."""
        with self._guard():
            return int(self._ensure_epoch(keys=[keys.EPOCH]))

    def current_epoch(self) -> int:
        """The revoke-all epoch now: what an exchange stamps on its grant, read when the
        request arrives so that a revoke-all landing while it runs refuses its write."""
        with self._guard():
            epoch = self._r.get(keys.EPOCH)
        return int(epoch) if epoch is not None else self.ensure_epoch()

    # -- exchange -------------------------------------------------------------------------
    def preflight(
        self,
        *,
        issuer_id: str,
        jti: str | None,
        task_id: str,
        identity_id: str | None = None,
        rate_window_seconds: int = 0,
    ) -> PreflightState:
        """Everything the exchange reads before it decides, in one round trip: the epoch,
        replay, the task's tombstone and owner, the identity's suspension state, and (when a
        window is given and the token is not a replay) one count against the verified
        identity's rate limit."""
        with self._guard():
            epoch, replayed, done, raw_state, requests, reset, owner = self._preflight(
                keys=[
                    keys.EPOCH,
                    keys.replay(issuer_id, jti) if jti else keys.EPOCH + ":none",
                    keys.task_tombstone(task_id),
                    keys.IDENTITY_STATE,
                    keys.rate_counter("identity", identity_id or "-"),
                    keys.task_owner(task_id),
                ],
                args=[identity_id or "", rate_window_seconds if identity_id else 0],
            )
        state = _state_record(raw_state) if raw_state else None
        reset = max(int(reset), 1) if requests else 0
        if epoch is None:
            epoch = self.ensure_epoch()  # Redis lost its data (or is new): restart the epoch
        return PreflightState(
            epoch=int(epoch),
            replayed=bool(replayed and jti),
            task_completed=bool(done),
            identity_state=state,
            identity_requests=requests,
            identity_window_reset=reset,
            task_owner=str(owner) if owner else None,
        )

    def save_grant(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int = 0,
    ) -> None:
        with self._guard():
            result = self._save_call(grant, replay=replay, audit=audit, now=now, quota=quota)
        if result != "ok":
            raise WriteRefused(str(result))

    def save_many(self, grants: list[Grant], *, now: int, batch: int = 2000) -> None:
        """Pipelined grant writes with no replay entry and no audit detail: for benchmarks
        and tests that need many live grants fast. Refusals are not reported."""
        with self._guard():
            pipe = self._r.pipeline(transaction=False)
            for i, grant in enumerate(grants, 1):
                self._save_call(grant, replay=None, audit={}, now=now, quota=0, client=pipe)
                if i % batch == 0:
                    pipe.execute()
            pipe.execute()

    def _save_call(
        self,
        grant: Grant,
        *,
        replay: tuple[str, str, int] | None,
        audit: Mapping[str, Any],
        now: int,
        quota: int,
        client: Any = None,
    ) -> Any:
        replay_key = keys.replay(replay[0], replay[1]) if replay else keys.EPOCH + ":none"
        return self._save(
            keys=[
                keys.grant(grant.jti),
                keys.task_index(grant.task_id),
                keys.identity_index(grant.identity_id),
                keys.EXPIRY_INDEX,
                keys.EPOCH,
                keys.task_tombstone(grant.task_id),
                replay_key,
                keys.AUDIT_STREAM,
                keys.IDENTITY_STATE,
                keys.LAST_EXCHANGE,
                keys.task_owner(grant.task_id),
            ],
            args=[
                grant.jti,
                grant.exp,
                now,
                grant.epoch,
                "1" if replay else "0",
                replay[2] if replay else 0,
                expiry_member(grant),
                self._audit_maxlen,
                json.dumps(audit, separators=(",", ":")),
                quota,
                keys.GRANT_PREFIX,
                *_grant_fields(grant),
            ],
            client=client,
        )

    # -- introspection --------------------------------------------------------------------
    def grant_state(self, jti: str, task_id: str) -> GrantState:
        with self._guard():
            pipe = self._r.pipeline(transaction=False)
            pipe.hgetall(keys.grant(jti))
            pipe.get(keys.EPOCH)
            pipe.exists(keys.task_tombstone(task_id))
            record, epoch, done = pipe.execute()
        grant = _grant_from(jti, record) if record else None
        return GrantState(grant=grant, current_epoch=int(epoch or 0), task_completed=bool(done))

    # -- revocation and completion ---------------------------------------------------------
    def revoke_grant(self, jti: str, *, audit: Mapping[str, Any]) -> tuple[str, str] | None:
        """Revoke one grant; returns its (task, identity), or None if it was not live."""
        with self._guard():
            found = self._revoke(
                keys=[
                    keys.grant(jti),
                    keys.EXPIRY_INDEX,
                    keys.AUDIT_STREAM,
                    keys.REVOCATION_FEED,
                ],
                args=[jti, self._audit_maxlen, json.dumps(audit, separators=(",", ":"))],
            )
        if not found:
            return None
        return str(found[0]), str(found[1])

    def complete_task(
        self,
        task_id: str,
        *,
        identity_id: str,
        tombstone_seconds: int,
        audit: Mapping[str, Any],
        now: int,
        skew_seconds: int = 60,
    ) -> bool:
        """Tombstone the task, if `identity_id` owns it (WriteRefused("task_foreign") if
        not); False when it was already complete. Its feed entry covers tokens with iat up to
        now + skew: no token of the task can be issued after the tombstone, and a node whose
        clock runs ahead may have stamped an earlier one with a later iat."""
        with self._guard():
            result = self._complete(
                keys=[
                    keys.task_tombstone(task_id),
                    keys.COMPLETING,
                    keys.AUDIT_STREAM,
                    keys.REVOCATION_FEED,
                    keys.task_owner(task_id),
                ],
                args=[
                    tombstone_seconds,
                    now,
                    self._audit_maxlen,
                    json.dumps(audit, separators=(",", ":")),
                    task_id,
                    now + tombstone_seconds,
                    now + skew_seconds,
                    identity_id,
                ],
            )
        if int(result) < 0:
            raise WriteRefused("task_foreign")
        return bool(result)

    def task_grant_ids(self, task_id: str) -> list[str]:
        return self._call(lambda: list(self._r.zrange(keys.task_index(task_id), 0, -1)))

    def finish_task_cleanup(self, task_id: str) -> None:
        self._call(lambda: self._r.zrem(keys.COMPLETING, task_id))

    def stale_completions(self, older_than: float) -> list[str]:
        return self._call(
            lambda: list(
                self._r.zrangebyscore(keys.COMPLETING, "-inf", older_than, start=0, num=1000)
            )
        )

    def sweep_expired(self, *, now: int, batch: int) -> int:
        with self._guard():
            return int(
                self._sweep(
                    keys=[keys.EXPIRY_INDEX, keys.AUDIT_STREAM],
                    args=[now, batch, self._audit_maxlen, now],
                )
            )

    # -- operator views ---------------------------------------------------------------------
    def list_grants(
        self,
        *,
        now: int,
        task_id: str | None,
        identity_ids: list[str] | None,
        limit: int,
    ) -> list[Grant]:
        """Live grants of a task, of some identities (an owner's, say), or of everyone."""
        with self._guard():
            if task_id:
                index = keys.task_index(task_id)
                jtis = list(self._r.zrangebyscore(index, now + 1, "+inf", start=0, num=limit))
            elif identity_ids is not None:
                jtis = []
                for identity_id in identity_ids:
                    index = keys.identity_index(identity_id)
                    jtis += self._r.zrangebyscore(
                        index, now + 1, "+inf", start=0, num=limit - len(jtis)
                    )
                    if len(jtis) >= limit:
                        break
            else:
                members = self._r.zrangebyscore(
                    keys.EXPIRY_INDEX, now + 1, "+inf", start=0, num=limit
                )
                jtis = [m.split(" ", 1)[0] for m in members]
            pipe = self._r.pipeline(transaction=False)
            for jti in jtis:
                pipe.hgetall(keys.grant(jti))
            records = pipe.execute()
        grants = [_grant_from(j, r) for j, r in zip(jtis, records, strict=True) if r]
        return [g for g in grants if g is not None]

    def audit_events(self, *, task_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first. Filtering by task scans the bounded stream (an operator query)."""
        out: list[dict[str, Any]] = []
        with self._guard():
            last = "+"
            while len(out) < limit:
                page = self._r.xrevrange(keys.AUDIT_STREAM, max=last, min="-", count=1000)
                if not page:
                    break
                for entry_id, fields in page:
                    try:
                        event = json.loads(fields.get("e", "{}"))
                    except ValueError:
                        continue
                    if task_id is None or event.get("task") == task_id:
                        event["id"] = entry_id
                        out.append(event)
                        if len(out) >= limit:
                            break
                last = "(" + page[-1][0]
        return out

    def append_audit(self, event: Mapping[str, Any]) -> None:
        with self._guard():
            self._r.xadd(
                keys.AUDIT_STREAM,
                {"e": json.dumps(event, separators=(",", ":"))},
                maxlen=int(self._audit_maxlen),
                approximate=True,
            )

    def ping(self) -> bool:
        with self._guard():
            return bool(self._r.ping())

    def eviction_policy(self) -> str | None:
        try:
            with self._guard():
                value = self._r.config_get("maxmemory-policy").get("maxmemory-policy")
        except (StoreUnavailable, ResponseError):
            return None
        return str(value) if value is not None else None

    # -- identity lifecycle (broker/domain/inventory.py) ------------------------------------
    def identity_state(self, identity_id: str) -> dict[str, Any] | None:
        """The suspension or offboarding record of an identity, None when it is active."""
        raw = self._call(lambda: self._r.hget(keys.IDENTITY_STATE, identity_id))
        return _state_record(raw)

    def identity_states(self) -> dict[str, dict[str, Any]]:
        raw = self._call(lambda: self._r.hgetall(keys.IDENTITY_STATE))
        out: dict[str, dict[str, Any]] = {}
        for identity_id, value in raw.items():
            record = _state_record(value)
            if record is not None:
                out[str(identity_id)] = record
        return out

    def set_identity_state(
        self, identity_id: str, record: Mapping[str, Any] | None, *, audit: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Set (or clear, record=None) an identity's state with its audit event, atomically.

        Offboarding is terminal: once the stored state is "offboarded" nothing changes it,
        whoever races. Returns the previous record (the stored one if it was offboarded)."""
        previous: dict[str, Any] | None = None

        def transition(pipe: Any) -> None:
            nonlocal previous
            previous = _state_record(pipe.hget(keys.IDENTITY_STATE, identity_id))
            if previous is not None and previous.get("state") == "offboarded":
                return
            pipe.multi()
            if record is None:
                pipe.hdel(keys.IDENTITY_STATE, identity_id)
            else:
                pipe.hset(
                    keys.IDENTITY_STATE,
                    identity_id,
                    json.dumps(dict(record), separators=(",", ":")),
                )
            pipe.xadd(
                keys.AUDIT_STREAM,
                {"e": json.dumps(audit, separators=(",", ":"))},
                maxlen=int(self._audit_maxlen),
                approximate=True,
            )

        with self._guard():
            self._r.transaction(transition, keys.IDENTITY_STATE)
        return previous

    def identity_grant_ids(self, identity_id: str) -> list[str]:
        members = self._call(lambda: self._r.zrange(keys.identity_index(identity_id), 0, -1))
        return [str(m) for m in members]

    def live_grant_counts(self, identity_ids: list[str], *, now: int) -> dict[str, int]:
        with self._guard():
            pipe = self._r.pipeline(transaction=False)
            for identity_id in identity_ids:
                pipe.zcount(keys.identity_index(identity_id), now + 1, "+inf")
            counts = pipe.execute()
        return {i: int(c) for i, c in zip(identity_ids, counts, strict=True)}

    def last_exchanges(self) -> dict[str, float]:
        raw = self._call(lambda: self._r.hgetall(keys.LAST_EXCHANGE))
        out: dict[str, float] = {}
        for identity_id, value in raw.items():
            try:
                out[str(identity_id)] = float(value)
            except ValueError:
                continue
        return out


def _state_record(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        # Unreadable but present: treat it as suspended, never as active (fail closed).
        return {"state": "suspended", "reason": "unreadable state record"}
    if not isinstance(record, dict):
        return {"state": "suspended", "reason": "unreadable state record"}
    return record


class RedisJwksState:
    """The cross-process JWKS mirror and refresh lock (see broker/identity/jwks.py)."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def load(self, issuer_id: str) -> tuple[str, float] | None:
        data = self._r.hmget(keys.jwks(issuer_id), "doc", "at")
        if not data[0] or not data[1]:
            return None
        return str(data[0]), float(data[1])

    def store(self, issuer_id: str, jwks_json: str, fetched_at: float, ttl_seconds: int) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(keys.jwks(issuer_id), mapping={"doc": jwks_json, "at": repr(fetched_at)})
        pipe.expire(keys.jwks(issuer_id), ttl_seconds)
        pipe.execute()

    def try_lock_refresh(self, issuer_id: str, cooldown_seconds: int) -> bool:
        return bool(self._r.set(keys.jwks_lock(issuer_id), "1", nx=True, ex=cooldown_seconds))
