-- console_touch: read a console session and, if it is still there, note its use and push
-- its expiry back (store/console_sessions.py RedisConsoleSessions.touch).
--
-- KEYS[1] the session hash.
-- ARGV[1] now (last_seen), ARGV[2] idle seconds (the key's new TTL).
-- Returns the hash as a flat list of field, value (empty when there is no session).
--
-- Redis does not roll a script back: the existence check comes before the first write, so a
-- request racing a logout never re-creates a half session with only a last_seen field.
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return record end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return record
