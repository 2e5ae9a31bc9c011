-- approval_decide: a person approves or denies a pending approval (store/approvals.py decide).
--
-- KEYS[1] approval hash, KEYS[2] pending index (zset id -> expires_at)
-- ARGV[1] approval id, ARGV[2] 'approved' or 'denied', ARGV[3] approver identity id,
-- ARGV[4] reason, ARGV[5] now (unix seconds)
-- Returns 'ok', or why not: missing, expired, self_approval, or the state it is already in.
--
-- Redis does not roll a script back, so every check comes before the first write: exists and is a hash, still pending, not
-- expired, and the approver is not the identity that asked.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return 'missing' end
if t ~= 'hash' then return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[1] .. ' holds a ' .. t) end
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'identity')
if f[1] ~= 'pending' then return f[1] or 'missing' end
if tonumber(f[2]) <= tonumber(ARGV[5]) then return 'expired' end
if f[3] == ARGV[3] then return 'self_approval' end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'approver', ARGV[3], 'reason', ARGV[4],
  'decided_at', ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
return 'ok'
