-- task_transition: move a task to another state of its lifecycle, for its owner or an
-- operator; record it in the audit stream and publish it on the revocation feed
-- (store/task_lifecycle.py RedisTaskLifecycle.transition_task; docs/agents.md).
--
-- KEYS[1] task tombstone, KEYS[2] completing (tasks whose clean-up is pending),
-- KEYS[3] audit stream, KEYS[4] revocation feed, KEYS[5] task owner, KEYS[6] task state,
-- KEYS[7] task index, KEYS[8] open tasks, KEYS[9] ended tasks (task -> tombstone expiry;
-- both counted by /metrics, store/gauges.py).
-- ARGV[1] target state: suspended | running | completed | failed | cancelled,
-- ARGV[2] now, ARGV[3] audit stream maxlen, ARGV[4] audit event JSON, ARGV[5] task id,
-- ARGV[6] the identity asking ('' for an operator), ARGV[7] tombstone seconds,
-- ARGV[8] feed cut-off (iat), ARGV[9] seconds a suspended task is kept,
-- ARGV[10] expiry of a suspend or resume feed entry.
-- Returns {outcome, state before}: outcome 'changed', 'same' (it already was: nothing
-- written), 'foreign' (another identity's task), 'unknown' (no such task to suspend or
-- resume; a task unknown yet may be ended, and its state before is then 'unknown'),
-- 'illegal' (no way from there: a terminal state is absorbing).
--
-- Redis does not roll a script back: every read and check comes before the first write, and
-- a key of the wrong type fails a read (GET, HMGET) before anything is written. The grant
-- write (save_grant.lua) reads the same keys in one script, so a grant and a transition are
-- ordered: either the grant was written first (and the new state covers it) or the grant
-- write sees the new state and refuses.
local now = tonumber(ARGV[2])
local owner = redis.call('GET', KEYS[5])
-- Only the task's owner (or an operator) moves it; checked first, so a stranger learns
-- nothing about another identity's task.
if ARGV[6] ~= '' and owner and owner ~= ARGV[6] then return {'foreign', ''} end
local done = redis.call('GET', KEYS[1])
local task = redis.call('HMGET', KEYS[6], 's', 'd', 'l')
local state
if done then
  -- 'failed 1800000000'; a tombstone of an older version holds only the time: completed.
  state = string.match(done, '^(%a+)') or 'completed'
elseif task[2] and now >= tonumber(task[2]) then
  state = 'expired'
elseif task[1] == 'suspended' then
  state = 'suspended'
elseif owner or redis.call('EXISTS', KEYS[6]) == 1 or redis.call('ZCOUNT', KEYS[7], '(' .. ARGV[2], '+inf') > 0 then
  state = 'running'
else
  state = 'unknown'
end
local target = ARGV[1]
if target == state then return {'same', state} end
if state == 'unknown' then
  -- Nothing to suspend or resume; ending it ahead of time keeps the name refused, as a
  -- completion always has (an exchange racing the task's first grant is refused).
  if target == 'suspended' or target == 'running' then return {'unknown', ''} end
elseif state ~= 'running' and state ~= 'suspended' then
  return {'illegal', state}
end

-- No change without its audit event.
local refused = audit_refusal(redis.call('TYPE', KEYS[3])['ok'], KEYS[3])
if refused then return refused end
for i = 8, 9 do  -- the gauges' indexes: a wrong type must fail before the first write
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= 'zset' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is not a zset')
  end
end

-- Writes from here on.
local tombstone_seconds = tonumber(ARGV[7])
if target == 'suspended' or target == 'running' then
  redis.call('HSET', KEYS[6], 's', target, 't', ARGV[2])
  local until_at
  if target == 'suspended' then
    -- A suspension does not lapse with the task's last grant: the task, and its name, are
    -- kept for ARGV[9] seconds, so a new exchange cannot reopen it as running.
    until_at = now + tonumber(ARGV[9])
  else
    -- Running again: kept as a running task is (its latest grant, its deadline), and for a
    -- tombstone period at least, so the owner can re-mint under the same task.
    local latest = redis.call('ZREVRANGE', KEYS[7], 0, 0, 'WITHSCORES')[2]
    until_at = math.max(tonumber(latest or 0), now + tombstone_seconds)
    if task[2] then until_at = math.max(until_at, tonumber(task[2]) + tombstone_seconds) end
  end
  redis.call('EXPIREAT', KEYS[6], until_at)
  if owner then redis.call('EXPIREAT', KEYS[5], until_at) end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
  local kind = target == 'suspended' and 'task_suspended' or 'task_resumed'
  redis.call('XADD', KEYS[4], '*', 'k', kind, 'v', ARGV[5], 'n', ARGV[8], 'x', ARGV[10])
  return {'changed', state}
end

-- A terminal state: the tombstone refuses every token and every grant write of the task.
redis.call('SET', KEYS[1], target .. ' ' .. ARGV[2], 'EX', tombstone_seconds)
-- The owner keeps the name, and the record its deadline and labels, as long as the
-- tombstone refuses the task to everyone else; then all three go together.
if owner then redis.call('EXPIRE', KEYS[5], tombstone_seconds) end
if redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('HSET', KEYS[6], 's', target, 't', ARGV[2])
  redis.call('EXPIRE', KEYS[6], tombstone_seconds)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('ZREM', KEYS[8], ARGV[5])
redis.call('ZADD', KEYS[9], now + tombstone_seconds, ARGV[5])
if redis.call('TTL', KEYS[9]) < tombstone_seconds then
  redis.call('EXPIRE', KEYS[9], tombstone_seconds)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
redis.call('XADD', KEYS[4], '*', 'k', 'task', 'v', ARGV[5], 'n', ARGV[8],
           'x', tostring(now + tombstone_seconds))
return {'changed', state}
