-- save_hop: write one delegation hop (RFC 8693 actor_token) under its parent grant: the hop's
-- grant, its indexes, its place in the parent's children index, the actor token's replay
-- entry and the audit event together, or refuse and write nothing (store/chains.py
-- RedisChains.save_hop).
--
-- KEYS[1]  grant hash of the hop          KEYS[8]  audit stream
-- KEYS[2]  task index (the root's task)   KEYS[9]  identity states (suspension, offboarding)
-- KEYS[3]  identity index of the actor    KEYS[10] last exchange per identity
-- KEYS[4]  expiry index                   KEYS[11] task owner
-- KEYS[5]  revoke-all epoch               KEYS[12] children index of the parent grant
-- KEYS[6]  task tombstone                 KEYS[13] task state (lifecycle record)
-- KEYS[7]  replay key of the actor token  KEYS[14..] grant hashes of the parent and every
--          (or a dummy)                               ancestor (the parent first)
-- ARGV[1] jti, ARGV[2] exp, ARGV[3] now, ARGV[4] the epoch read when the request arrived,
-- ARGV[5] '1' to claim the replay key, ARGV[6] its expiry (unix time), ARGV[7] the expiry
-- index member, ARGV[8] audit stream maxlen, ARGV[9] audit event JSON, ARGV[10] live-grant
-- quota of the actor (0: none), ARGV[11] the subject identity (the task's owner),
-- ARGV[12] the task id, then the grant's field/value pairs (ARGV[14], the value of 'i', is
-- the actor).
-- Returns 'ok', or why it refused: task_foreign, subject_inactive, task_completed,
-- task_suspended, task_expired, identity_blocked, subject_blocked, quota_exceeded, epoch_changed, replayed.
--
-- Redis does not roll a script back: every check comes before the first write. In order:
--   1. every key written holds the type the writes expect (or nothing), the hop's key is new;
--   2. the task's owner is the subject the chain acts for: a hop joins the root's task by
--      delegation, never a stranger's (the owner key is set by the root's grant and outlives
--      it; a hop never sets or extends it beyond the parent, whose exp bounds the hop's);
--   3. the parent and every ancestor grant are live, in this task, with the current epoch:
--      a revoked link refuses the hops below it, even one racing the revocation;
--   4. the task is not complete, suspended or past its deadline (a hop's exp is already
--      capped to it by the domain, and the parent's exp bounds it too); 5. neither the actor nor the subject is suspended or
--      offboarded; 6. the actor is under its live-grant quota; 7. the epoch has not moved;
--   8. the actor token's replay key is claimed (SET NX): the first write, and the last check.
local want = {[1] = 'hash', [2] = 'zset', [3] = 'zset', [4] = 'zset', [8] = 'stream',
              [9] = 'hash', [10] = 'hash', [11] = 'string', [12] = 'zset', [13] = 'hash'}
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
local actor, subject = ARGV[14], ARGV[11]
local owner = redis.call('GET', KEYS[11])
if owner and owner ~= subject then return 'task_foreign' end
local epoch = redis.call('GET', KEYS[5])
for i = 14, #KEYS do
  local link = redis.call('HMGET', KEYS[i], 't', 'p')
  if not link[1] or link[1] ~= ARGV[12] or link[2] ~= epoch then return 'subject_inactive' end
end
if not owner then return 'subject_inactive' end
if redis.call('EXISTS', KEYS[6]) == 1 then return 'task_completed' end
local task = redis.call('HMGET', KEYS[13], 's', 'd')
if task[1] == 'suspended' then return 'task_suspended' end
if task[2] and tonumber(ARGV[3]) >= tonumber(task[2]) then return 'task_expired' end
if redis.call('HEXISTS', KEYS[9], actor) == 1 then return 'identity_blocked' end
if redis.call('HEXISTS', KEYS[9], subject) == 1 then return 'subject_blocked' end
local quota = tonumber(ARGV[10])
if quota > 0 and redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[3], '+inf') >= quota then
  return 'quota_exceeded'
end
if not epoch then
  redis.call('SET', KEYS[5], redis.call('TIME')[1], 'NX')
  return 'epoch_changed'
end
if epoch ~= ARGV[4] then return 'epoch_changed' end
if ARGV[5] == '1' then
  if not redis.call('SET', KEYS[7], '1', 'NX', 'EXAT', ARGV[6]) then return 'replayed' end
end
local exp = tonumber(ARGV[2])
local ttl = exp - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 13))
redis.call('EXPIREAT', KEYS[1], exp)
for _, i in ipairs({2, 3, 12}) do
  redis.call('ZADD', KEYS[i], exp, ARGV[1])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIREAT', KEYS[i], exp) end
end
redis.call('ZADD', KEYS[4], exp, ARGV[7])
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[8], '*', 'e', ARGV[9])
redis.call('HSET', KEYS[10], actor, ARGV[3])
return 'ok'
