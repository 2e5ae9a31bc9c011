-- cluster_save_task: step 3 of a grant write on Redis Cluster (store/cluster_grants.py): the
-- grant itself, with its task's checks, in the task's bucket ({t.BBB}).
--
-- KEYS[1] grant hash, KEYS[2] task index, KEYS[3] task tombstone, KEYS[4] task owner.
-- ARGV[1] jti, ARGV[2] exp, ARGV[3] now, then the grant's field/value pairs (ARGV[5], the
-- value of 'i', is the identity).
-- Returns 'ok', 'task_foreign' or 'task_completed'.
--
-- Redis does not roll a script back: every check (types, a new jti, the owner, the
-- tombstone) comes before the first write. Owner and tombstone are checked here, in the
-- same step as the write, as on a single Redis: a task completed a moment ago refuses.
local want = {[1] = 'hash', [2] = 'zset', [4] = 'string'}
for i, t in pairs(want) do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= t then
    return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[i] .. ' holds a ' .. have)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('ERRAND_CORRUPT jti reused') end
local me = ARGV[5]
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= me then return 'task_foreign' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'task_completed' end
local exp = tonumber(ARGV[2])
local ttl = exp - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIREAT', KEYS[1], exp)
redis.call('ZADD', KEYS[2], exp, ARGV[1])
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIREAT', KEYS[2], exp) end
if not owner then
  redis.call('SET', KEYS[4], me, 'EXAT', exp)
elseif redis.call('TTL', KEYS[4]) < ttl then
  redis.call('EXPIREAT', KEYS[4], exp)
end
return 'ok'
