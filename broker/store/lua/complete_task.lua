-- complete_task: tombstone a task for its owner, queue its clean-up, record it in the audit
-- stream and publish it on the revocation feed (store/grants.py RedisGrants.complete_task).
--
-- KEYS[1] task tombstone, KEYS[2] completing (tasks whose clean-up is pending),
-- KEYS[3] audit stream, KEYS[4] revocation feed, KEYS[5] task owner, KEYS[6] open tasks,
-- KEYS[7] completed tasks (task -> tombstone expiry; both counted by /metrics).
-- ARGV[1] tombstone seconds, ARGV[2] now, ARGV[3] audit stream maxlen, ARGV[4] audit event
-- JSON, ARGV[5] task id, ARGV[6] feed entry expiry, ARGV[7] feed cut-off (iat),
-- ARGV[8] the identity of the completing token.
-- Returns 1 (completed now), 0 (it already was), -1 (another identity's task).
--
-- Redis does not roll a script back: the owner check comes before the first write, and the
-- first write (SET NX of the tombstone) is also the check that the task is not complete yet.
-- Only the task's owner ends it, whichever grants of the task a token may name.
local owner = redis.call('GET', KEYS[5])
if owner and owner ~= ARGV[8] then return -1 end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then return 0 end
-- The owner keeps the name as long as the tombstone refuses it to everyone else.
if owner and redis.call('TTL', KEYS[5]) < tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[5], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('ZREM', KEYS[6], ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[6], ARGV[5])
if redis.call('TTL', KEYS[7]) < tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[7], ARGV[1]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
redis.call('XADD', KEYS[4], '*', 'k', 'task', 'v', ARGV[5], 'n', ARGV[7], 'x', ARGV[6])
return 1
