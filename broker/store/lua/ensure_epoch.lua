-- ensure_epoch: create the revoke-all epoch if Redis has none (first start, or after a loss
-- of data) and return it (store/grants.py RedisGrants.ensure_epoch).
--
-- KEYS[1] revoke-all epoch. No ARGV.
--
-- The epoch starts at Redis's clock (seconds), not at 0, so that after a loss of Redis data
-- it starts again above every epoch resource servers have seen.
-- Redis does not roll a script back: one check, then the one write.
if redis.call('EXISTS', KEYS[1]) == 1 then return tonumber(redis.call('GET', KEYS[1])) end
local now = redis.call('TIME')[1]
redis.call('SET', KEYS[1], now)
return tonumber(now)
