-- cluster_task_transition: step 1 of a task's move on Redis Cluster (store/cluster_grants.py
-- ClusterGrants.transition_task): the checks and the task's own keys, in its bucket
-- ({t.BBB}). Step 2 (lua/cluster_task_global.lua) records it in the global group: the audit
-- event, the feed entry, the clean-up queue and the gauges. The same states and answers as
-- lua/task_transition.lua, which does both in one script on a single Redis.
--
-- KEYS[1] task tombstone, KEYS[2] task owner, KEYS[3] task state, KEYS[4] task index.
-- ARGV[1] target state: suspended | running | completed | failed | cancelled,
-- ARGV[2] now, ARGV[3] the identity asking ('' for an operator), ARGV[4] tombstone seconds,
-- ARGV[5] seconds a suspended task is kept.
-- Returns {outcome, state before}, as task_transition.lua.
--
-- Redis does not roll a script back: every read and check comes before the first write. The
-- grant write's task step (cluster_save_task.lua, cluster_save_hop_task.lua) reads the same
-- keys in this slot, so a grant and a move are ordered here as on a single Redis.
local now = tonumber(ARGV[2])
local owner = redis.call('GET', KEYS[2])
if ARGV[3] ~= '' and owner and owner ~= ARGV[3] then return {'foreign', ''} end
local done = redis.call('GET', KEYS[1])
local task = redis.call('HMGET', KEYS[3], 's', 'd', 'l')
local state
if done then
  state = string.match(done, '^(%a+)') or 'completed'
elseif task[2] and now >= tonumber(task[2]) then
  state = 'expired'
elseif task[1] == 'suspended' then
  state = 'suspended'
elseif owner or redis.call('EXISTS', KEYS[3]) == 1 or redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[2], '+inf') > 0 then
  state = 'running'
else
  state = 'unknown'
end
local target = ARGV[1]
if target == state then return {'same', state} end
if state == 'unknown' then
  if target == 'suspended' or target == 'running' then return {'unknown', ''} end
elseif state ~= 'running' and state ~= 'suspended' then
  return {'illegal', state}
end

-- Writes from here on.
local tombstone_seconds = tonumber(ARGV[4])
if target == 'suspended' or target == 'running' then
  redis.call('HSET', KEYS[3], 's', target, 't', ARGV[2])
  local until_at
  if target == 'suspended' then
    until_at = now + tonumber(ARGV[5])
  else
    local latest = redis.call('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]
    until_at = math.max(tonumber(latest or 0), now + tombstone_seconds)
    if task[2] then until_at = math.max(until_at, tonumber(task[2]) + tombstone_seconds) end
  end
  redis.call('EXPIREAT', KEYS[3], until_at)
  if owner then redis.call('EXPIREAT', KEYS[2], until_at) end
  return {'changed', state}
end
redis.call('SET', KEYS[1], target .. ' ' .. ARGV[2], 'EX', tombstone_seconds)
if owner then redis.call('EXPIRE', KEYS[2], tombstone_seconds) end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 's', target, 't', ARGV[2])
  redis.call('EXPIRE', KEYS[3], tombstone_seconds)
end
return {'changed', state}
