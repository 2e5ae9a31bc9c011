-- hit_many: count one event on each of several fixed-window counters, in one round trip
-- (store/limits.py RedisLimits.hit_many).
--
-- KEYS: the counters. ARGV[1] window seconds.
-- Returns {count1, ttl1, count2, ttl2, ...}: SET NX EX starts a window, INCR keeps its TTL.
--
-- Redis does not roll a script back; nothing is checked, so nothing is checked too late:
-- should a command fail (a key of the wrong type), the request fails with it (a 503) and
-- the counts already made stand, which can only make a limit stricter, never looser.
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 0, 'EX', ARGV[1], 'NX')
  out[#out + 1] = redis.call('INCR', key)
  out[#out + 1] = redis.call('TTL', key)
end
return out
