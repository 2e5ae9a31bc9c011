-- approval_poll: one poll of an approval by the exchange (store/approvals.py poll).
--
-- KEYS[1] approval hash
-- ARGV[1] now (unix seconds), ARGV[2] the polling interval the caller was given (seconds)
-- Returns {state, slow_down}: state '' when the approval is unknown (expired and gone);
-- slow_down 1 when this poll came sooner than the interval after the previous one.
--
-- Redis does not roll a script back, so every check comes before the first write (the poll time): the key holds a hash or nothing.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {'', 0} end
if t ~= 'hash' then return redis.error_reply('ERRAND_CORRUPT ' .. KEYS[1] .. ' holds a ' .. t) end
local state = redis.call('HGET', KEYS[1], 'state') or ''
local last = tonumber(redis.call('HGET', KEYS[1], 'last_poll') or '0') or 0
local now = tonumber(ARGV[1])
local slow = 0
if last > 0 and now - last < tonumber(ARGV[2]) then slow = 1 end
redis.call('HSET', KEYS[1], 'last_poll', ARGV[1])
return {state, slow}
