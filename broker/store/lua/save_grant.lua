-- save_grant: write a grant, its indexes, its replay entry and its audit event together, or
-- refuse and write nothing (store/grants.py RedisGrants.save_grant).
--
-- KEYS[1]  grant hash                 KEYS[7]  replay key of the subject token (or a dummy)
-- KEYS[2]  task index                 KEYS[8]  audit stream
-- KEYS[3]  identity index             KEYS[9]  identity states (suspension, offboarding)
-- KEYS[4]  expiry index               KEYS[10] last exchange per identity
-- KEYS[5]  revoke-all epoch           KEYS[11] task owner
-- KEYS[6]  task tombstone             KEYS[12] task state (lifecycle record)
--                                     KEYS[13] open tasks (task -> exp of its newest grant)
-- ARGV[1] jti, ARGV[2] exp, ARGV[3] now, ARGV[4] the epoch read when the request arrived,
-- ARGV[5] '1' to claim the replay key, ARGV[6] its expiry (unix time), ARGV[7] the expiry
-- index member, ARGV[8] audit stream maxlen, ARGV[9] audit event JSON, ARGV[10] live-grant
-- quota of the identity (0: none), then the grant's field/value pairs (ARGV[12], the value
-- of 'i', is the identity), and last the task spec: '' or JSON {d: deadline, l: labels,
-- x: keep the task's record until} (domain/tasks.py TaskSpec).
-- Returns 'ok', or why it refused: task_foreign, task_completed, task_suspended,
-- task_expired, task_spec_mismatch, task_deadline, identity_blocked, quota_exceeded,
-- epoch_changed, replayed.
--
-- Redis does not roll a script back: every check comes before the first write, so a command
-- cannot fail half-way and leave a partial grant or a burned jti. In order:
--   1. every key written below holds the type the writes expect (or nothing), and the grant
--      key is new: a wrong type would make a write fail after others had happened;
--   2. the task is this identity's (its owner key; the key migration gave every older task
--      one), before the tombstone, so a stranger learns nothing of another's task;
--   3. the task is not complete (or failed, cancelled), not suspended, not past its
--      deadline; a deadline and labels are the task's own from when it opened, and the
--      grant's exp is within the deadline; 4. the identity is not suspended or offboarded;
--   5. the identity is under its live-grant quota;
--   6. the epoch has not moved (if Redis lost it, the script restarts it and refuses: that
--      SET is the only write of that path);
--   7. the replay key is claimed (SET NX): the first write, and the last check, so a refusal
--      for any other reason leaves the subject token unspent.
-- (There is no owner index: an owner's grants are its identities' grants, and the inventory
-- knows which identities an owner has. It saves ~130 bytes per live grant.)
local want = {[1] = 'hash', [2] = 'zset', [3] = 'zset', [4] = 'zset', [8] = 'stream',
              [9] = 'hash', [10] = 'hash', [11] = 'string', [12] = 'hash', [13] = 'zset'}
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
local me = ARGV[12]
local task_id = ''
for k = 11, #ARGV - 2, 2 do  -- the grant's fields: 't' is its task
  if ARGV[k] == 't' then task_id = ARGV[k + 1] end
end
-- A task belongs to the identity that opened it, for its whole life: the owner key is set
-- once and outlives every grant of the task (and, once complete, its tombstone). Checked
-- before the tombstone, so a stranger learns nothing about another identity's task.
local owner = redis.call('GET', KEYS[11])
if owner and owner ~= me then return 'task_foreign' end
if redis.call('EXISTS', KEYS[6]) == 1 then return 'task_completed' end
-- The task's lifecycle (docs/agents.md): suspended or past its deadline, nothing new.
local task = redis.call('HMGET', KEYS[12], 's', 'd', 'l')
local recorded = redis.call('EXISTS', KEYS[12]) == 1
if task[1] == 'suspended' then return 'task_suspended' end
local deadline = tonumber(task[2])
if deadline and tonumber(ARGV[3]) >= deadline then return 'task_expired' end
local spec = ARGV[#ARGV] ~= '' and cjson.decode(ARGV[#ARGV]) or nil
local opening = not owner and not recorded
if spec and not opening then
  -- Set once, when the task opens: a renewal may repeat them, never change or add them.
  if (spec.d and tonumber(spec.d) ~= deadline) or (spec.l and spec.l ~= task[3]) then
    return 'task_spec_mismatch'
  end
end
if spec and opening then deadline = tonumber(spec.d) end
-- No token outlives its task's deadline; the exchange capped it from what it read, and a
-- task opened in the meantime with an earlier deadline refuses here (the caller retries).
if deadline and tonumber(ARGV[2]) > deadline then return 'task_deadline' end
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
-- The owner's name and the task's record last until the latest of its grants' exp and, for
-- a task with a deadline, until its deadline has passed by a tombstone period.
local keep_until = exp
if spec and opening then keep_until = math.max(exp, tonumber(spec.x)) end
redis.call('HSET', KEYS[1], unpack(ARGV, 11, #ARGV - 1))
redis.call('EXPIREAT', KEYS[1], exp)
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], exp, ARGV[1])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIREAT', KEYS[i], exp) end
end
if not owner then
  redis.call('SET', KEYS[11], me, 'EXAT', keep_until)
elseif redis.call('TTL', KEYS[11]) < ttl then
  redis.call('EXPIREAT', KEYS[11], exp)
end
if spec and opening then
  redis.call('HSET', KEYS[12], 'c', ARGV[3])
  if spec.d then redis.call('HSET', KEYS[12], 'd', spec.d) end
  if spec.l then redis.call('HSET', KEYS[12], 'l', spec.l) end
  redis.call('EXPIREAT', KEYS[12], keep_until)
elseif recorded and redis.call('TTL', KEYS[12]) < ttl then
  redis.call('EXPIREAT', KEYS[12], exp)
end
redis.call('ZADD', KEYS[4], exp, ARGV[7])
-- Counted by /metrics (tasks by state).
redis.call('ZADD', KEYS[13], 'GT', exp, task_id)
if redis.call('TTL', KEYS[13]) < ttl then redis.call('EXPIREAT', KEYS[13], exp) end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[8], '*', 'e', ARGV[9])
redis.call('HSET', KEYS[10], me, ARGV[3])
return 'ok'
