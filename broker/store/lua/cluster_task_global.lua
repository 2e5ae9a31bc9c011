-- cluster_task_global: step 2 of a task's move on Redis Cluster (store/cluster_grants.py):
-- what the global group ({g}) records of it. Run after step 1 answered 'changed' (with the
-- audit event), and again, without one, after it answered 'same': a broker that stopped
-- between the two steps is repaired by the caller's retry (at worst a repeated feed entry).
--
-- KEYS[1] completing (tasks whose clean-up is pending), KEYS[2] audit stream,
-- KEYS[3] revocation feed, KEYS[4] open tasks, KEYS[5] ended tasks.
-- ARGV[1] target state, ARGV[2] now, ARGV[3] audit stream maxlen, ARGV[4] audit event JSON
-- ('' for none), ARGV[5] task id, ARGV[6] tombstone seconds, ARGV[7] feed cut-off (iat),
-- ARGV[8] expiry of a suspend or resume feed entry.
-- Returns 'ok'.
--
-- Redis does not roll a script back: the type checks come before the first write.
for i = 4, 5 do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= 'zset' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is not a zset')
  end
end
local now = tonumber(ARGV[2])
local target = ARGV[1]
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
end
if target == 'suspended' or target == 'running' then
  local kind = target == 'suspended' and 'task_suspended' or 'task_resumed'
  redis.call('XADD', KEYS[3], '*', 'k', kind, 'v', ARGV[5], 'n', ARGV[7], 'x', ARGV[8])
  return 'ok'
end
local tombstone_seconds = tonumber(ARGV[6])
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[5], now + tombstone_seconds, ARGV[5])
if redis.call('TTL', KEYS[5]) < tombstone_seconds then
  redis.call('EXPIRE', KEYS[5], tombstone_seconds)
end
redis.call('XADD', KEYS[3], '*', 'k', 'task', 'v', ARGV[5], 'n', ARGV[7],
           'x', tostring(now + tombstone_seconds))
return 'ok'
