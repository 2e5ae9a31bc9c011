-- cluster_save_global: step 4, the last, of a grant or delegation hop write on Redis Cluster
-- (store/cluster_grants.py): the checks and records of the global group ({g}).
--
-- KEYS[1] revoke-all epoch, KEYS[2] expiry index, KEYS[3] audit stream, KEYS[4] identity
-- states, KEYS[5] last exchange per identity, KEYS[6] open tasks (task -> exp of its newest
-- grant; counted by /metrics).
-- ARGV[1] the epoch read when the request arrived, ARGV[2] identity, ARGV[3] expiry-index
-- member, ARGV[4] exp, ARGV[5] audit stream maxlen, ARGV[6] audit event JSON, ARGV[7] now,
-- ARGV[8] task id ('' for a hop: it opens no task), ARGV[9] the subject of a hop ('' for a
-- grant): it must not be suspended or offboarded either.
-- Returns 'ok', 'identity_blocked', 'subject_blocked' or 'epoch_changed'; on a refusal the
-- caller undoes steps 1 to 3.
--
-- Redis does not roll a script back: every check comes before the first write (except the
-- restart of a lost epoch, the only write of that path, as in save_grant.lua).
local want = {[2] = 'zset', [3] = 'stream', [4] = 'hash', [5] = 'hash', [6] = 'zset'}
for i, t in pairs(want) do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= t then
    return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[i] .. ' holds a ' .. have)
  end
end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then return 'identity_blocked' end
if ARGV[9] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[9]) == 1 then
  return 'subject_blocked'
end
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], redis.call('TIME')[1], 'NX')
  return 'epoch_changed'
end
if epoch ~= ARGV[1] then return 'epoch_changed' end
local exp = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], exp, ARGV[3])
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[6], 'GT', exp, ARGV[8])
  if redis.call('TTL', KEYS[6]) < exp - tonumber(ARGV[7]) then
    redis.call('EXPIREAT', KEYS[6], exp)
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[6])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[7])
return 'ok'
