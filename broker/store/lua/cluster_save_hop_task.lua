-- cluster_save_hop_task: step 3 of a delegation hop's write on Redis Cluster
-- (store/cluster_grants.py ClusterChains): the hop's grant, with its chain's and task's
-- checks, in the root task's bucket ({t.BBB}). A hop's jti is minted in the root task's
-- bucket (domain/delegation.py), so the hop, its parent and every ancestor, the parent's
-- children index and the task's keys share this slot.
--
-- KEYS[1] grant hash of the hop, KEYS[2] task index, KEYS[3] task tombstone, KEYS[4] task
-- owner, KEYS[5] children index of the parent, KEYS[6] task state, KEYS[7..] grant hashes
-- of the parent and every ancestor (the parent first).
-- ARGV[1] jti, ARGV[2] exp, ARGV[3] now, ARGV[4] the epoch read when the request arrived,
-- ARGV[5] the subject identity (the task's owner), ARGV[6] the task id, then the grant's
-- field/value pairs.
-- Returns 'ok', or task_foreign, subject_inactive, task_completed, task_suspended,
-- task_expired (as save_hop.lua; its global checks are cluster_save_global.lua's).
--
-- Redis does not roll a script back: every check comes before the first write. Each link's
-- epoch is compared with the epoch read at arrival; step 4 checks that one is still current.
local want = {[1] = 'hash', [2] = 'zset', [4] = 'string', [5] = 'zset', [6] = 'hash'}
for i, t in pairs(want) do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= t then
    return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[i] .. ' holds a ' .. have)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('ERRAND_CORRUPT jti reused') end
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[5] then return 'task_foreign' end
for i = 7, #KEYS do
  local link = redis.call('HMGET', KEYS[i], 't', 'p')
  if not link[1] or link[1] ~= ARGV[6] or link[2] ~= ARGV[4] then return 'subject_inactive' end
end
if not owner then return 'subject_inactive' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'task_completed' end
local task = redis.call('HMGET', KEYS[6], 's', 'd')
if task[1] == 'suspended' then return 'task_suspended' end
if task[2] and tonumber(ARGV[3]) >= tonumber(task[2]) then return 'task_expired' end
local exp = tonumber(ARGV[2])
local ttl = exp - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('EXPIREAT', KEYS[1], exp)
for _, i in ipairs({2, 5}) do
  redis.call('ZADD', KEYS[i], exp, ARGV[1])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIREAT', KEYS[i], exp) end
end
return 'ok'
