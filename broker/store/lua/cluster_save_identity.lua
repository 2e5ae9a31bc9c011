-- cluster_save_identity: step 1 of a grant write on Redis Cluster (store/cluster_grants.py):
-- the identity's live-grant quota and its index entry, in the identity's slot ({i.ID}).
--
-- KEYS[1] the identity's index.
-- ARGV[1] jti, ARGV[2] exp, ARGV[3] now, ARGV[4] live-grant quota (0: none).
-- Returns 'ok' or 'quota_exceeded'.
--
-- The entry goes in before the identity's state is read (step 4): a suspension that lands
-- after that read finds this grant in the index and revokes it.
-- Redis does not roll a script back: the type and quota checks come before the one write.
local have = redis.call('TYPE', KEYS[1])['ok']
if have ~= 'none' and have ~= 'zset' then
  return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[1] .. ' holds a ' .. have)
end
local quota = tonumber(ARGV[4])
if quota > 0 and redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[3], '+inf') >= quota then
  return 'quota_exceeded'
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) - tonumber(ARGV[3]) then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return 'ok'
