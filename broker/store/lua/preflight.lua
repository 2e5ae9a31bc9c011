-- preflight: everything the exchange reads before it decides, in one round trip
-- (store/grants.py RedisGrants.preflight).
--
-- KEYS[1] revoke-all epoch, KEYS[2] replay key of the subject token (or a dummy),
-- KEYS[3] task tombstone, KEYS[4] identity states, KEYS[5] the identity's rate counter,
-- KEYS[6] task owner, KEYS[7] task state (lifecycle record).
-- ARGV[1] identity id ('' for none), ARGV[2] rate window seconds (0: do not count).
-- Returns {epoch or false, replayed 0/1, completed 0/1, identity state or false,
--          requests in the window, seconds until it resets, task owner or false,
--          task state or false, task deadline or false}.
--
-- Redis does not roll a script back; nothing here needs it to: the script only reads,
-- except for the one rate count, which is its last step, so no check follows a write.
local epoch = redis.call('GET', KEYS[1])
local replayed = redis.call('EXISTS', KEYS[2])
local done = redis.call('EXISTS', KEYS[3])
local owner = redis.call('GET', KEYS[6])
local task = redis.call('HMGET', KEYS[7], 's', 'd')
local state = false
local n, ttl = 0, 0
if ARGV[1] ~= '' then
  state = redis.call('HGET', KEYS[4], ARGV[1])
  -- A replay of a spent token is refused without counting: whoever holds a victim's used
  -- token must not be able to spend the victim's budget with it.
  if tonumber(ARGV[2]) > 0 and replayed == 0 then
    redis.call('SET', KEYS[5], 0, 'EX', ARGV[2], 'NX')  -- starts a fixed window
    n = redis.call('INCR', KEYS[5])  -- keeps the window's TTL
    ttl = redis.call('TTL', KEYS[5])
  end
end
return {epoch or false, replayed, done, state or false, n, ttl, owner or false,
        task[1] or false, task[2] or false}
