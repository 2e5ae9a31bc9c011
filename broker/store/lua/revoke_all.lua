-- revoke_all: the revoke-all cut (store/revocations.py RedisRevocationStore.revoke_all).
-- One INCR of the epoch makes every older grant inactive at once; workers clean up after.
--
-- KEYS[1] revoke-all epoch, KEYS[2] epoch log, KEYS[3] audit stream, KEYS[4] fan-outs under
-- way, KEYS[5] expiry index.
-- ARGV[1] now, ARGV[2] audit stream maxlen, ARGV[3] audit event JSON (the epoch and the
-- count of live grants are added here).
-- Returns {new epoch, grants live at the cut}.
--
-- Redis does not roll a script back. The one check before writing: the audit stream can
-- take the event (no cut without it). The first write is the cut itself, so should a later command fail (the log, the fan-out
-- entry, the audit event), the cut has still happened. The epoch starts at Redis's clock
-- if it is missing, never at 0.
local refused = audit_refusal(redis.call('TYPE', KEYS[3])['ok'], KEYS[3])
if refused then return refused end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], redis.call('TIME')[1]) end
local epoch = redis.call('INCR', KEYS[1])
local live = redis.call('ZCOUNT', KEYS[5], '(' .. ARGV[1], '+inf')
local event = cjson.decode(ARGV[3])
event['epoch'] = epoch
event['live_grants'] = live
redis.call('HSET', KEYS[2], epoch, cjson.encode({at = tonumber(ARGV[1]), live = live}))
redis.call('ZADD', KEYS[4], ARGV[1], epoch)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', cjson.encode(event))
return {epoch, live}
