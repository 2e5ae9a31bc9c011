-- cluster_save_task: step 3 of a grant write on Redis Cluster (store/cluster_grants.py): the
-- grant itself, with its task's checks, in the task's bucket ({t.BBB}).
--
-- KEYS[1] grant hash, KEYS[2] task index, KEYS[3] task tombstone, KEYS[4] task owner,
-- KEYS[5] task state (lifecycle record).
-- ARGV[1] jti, ARGV[2] exp, ARGV[3] now, ARGV[4] the task spec: '' or JSON {d: deadline,
-- l: labels, x: keep the task's record until} (domain/tasks.py TaskSpec), then the grant's
-- field/value pairs (ARGV[6], the value of 'i', is the identity).
-- Returns 'ok', or task_foreign, task_completed, task_suspended, task_expired,
-- task_spec_mismatch, task_deadline (the same checks, in the same order, as save_grant.lua).
--
-- Redis does not roll a script back: every check (types, a new jti, the owner, the
-- tombstone, the task's lifecycle) comes before the first write. They are checked here, in
-- the same step as the write, as on a single Redis: a task completed or suspended a moment
-- ago (cluster_task_transition.lua, same slot) refuses.
local want = {[1] = 'hash', [2] = 'zset', [4] = 'string', [5] = 'hash'}
for i, t in pairs(want) do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= t then
    return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[i] .. ' holds a ' .. have)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('ERRAND_CORRUPT jti reused') end
local me = ARGV[6]
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= me then return 'task_foreign' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'task_completed' end
local task = redis.call('HMGET', KEYS[5], 's', 'd', 'l')
local recorded = redis.call('EXISTS', KEYS[5]) == 1
if task[1] == 'suspended' then return 'task_suspended' end
local deadline = tonumber(task[2])
if deadline and tonumber(ARGV[3]) >= deadline then return 'task_expired' end
local spec = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or nil
local opening = not owner and not recorded
if spec and not opening then
  if (spec.d and tonumber(spec.d) ~= deadline) or (spec.l and spec.l ~= task[3]) then
    return 'task_spec_mismatch'
  end
end
if spec and opening then deadline = tonumber(spec.d) end
if deadline and tonumber(ARGV[2]) > deadline then return 'task_deadline' end
local exp = tonumber(ARGV[2])
local ttl = exp - tonumber(ARGV[3])
local keep_until = exp
if spec and opening then keep_until = math.max(exp, tonumber(spec.x)) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIREAT', KEYS[1], exp)
redis.call('ZADD', KEYS[2], exp, ARGV[1])
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIREAT', KEYS[2], exp) end
if not owner then
  redis.call('SET', KEYS[4], me, 'EXAT', keep_until)
elseif redis.call('TTL', KEYS[4]) < ttl then
  redis.call('EXPIREAT', KEYS[4], exp)
end
if spec and opening then
  redis.call('HSET', KEYS[5], 'c', ARGV[3])
  if spec.d then redis.call('HSET', KEYS[5], 'd', spec.d) end
  if spec.l then redis.call('HSET', KEYS[5], 'l', spec.l) end
  redis.call('EXPIREAT', KEYS[5], keep_until)
elseif recorded and redis.call('TTL', KEYS[5]) < ttl then
  redis.call('EXPIREAT', KEYS[5], exp)
end
return 'ok'
