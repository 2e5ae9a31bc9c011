-- approval_consume: spend an approved approval on the one token it was given for
-- (store/approvals.py consume). An approval issues one token, once.
--
-- KEYS[1] approval hash
-- ARGV[1] now (unix seconds)
-- Returns 'ok', or why not: missing, expired, or the state it is in (pending, denied, issued).
--
-- Redis does not roll a script back, so every check comes before the first write: exists and is a hash, approved, not expired.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return 'missing' end
if t ~= 'hash' then return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[1] .. ' holds a ' .. t) end
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at')
if f[1] ~= 'approved' then return f[1] or 'missing' end
if tonumber(f[2]) <= tonumber(ARGV[1]) then return 'expired' end
redis.call('HSET', KEYS[1], 'state', 'issued', 'issued_at', ARGV[1])
return 'ok'
