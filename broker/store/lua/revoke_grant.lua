-- revoke_grant: revoke one grant, record it in the audit stream and publish it on the
-- revocation feed, in one step (store/grants.py RedisGrants.revoke_grant; single Redis and
-- Sentinel. On a cluster these keys span slots: store/grant_steps.py runs it in steps). The
-- delegation hops below the grant are revoked next, by store/grant_steps.py cascade.
--
-- KEYS[1] grant hash, KEYS[2] expiry index, KEYS[3] audit stream, KEYS[4] revocation feed,
-- KEYS[5] the task's index, KEYS[6] the identity's index (named by the grant's fields, read
-- just before).
-- ARGV[1] jti, ARGV[2] audit stream maxlen, ARGV[3] audit event JSON (the task and identity
-- are added here, from the grant), ARGV[4] task, ARGV[5] identity (as read).
-- Returns {task, identity}, 0 when the grant was not live, or 'moved' when its fields no
-- longer match the keys passed (the caller reads again).
--
-- Redis does not roll a script back: the checks (is the grant live? do its fields match the
-- index keys? can the audit stream take the event?) come before the first write, and that
-- write deletes the grant, so should a later command fail the token is already dead.
local g = redis.call('HMGET', KEYS[1], 't', 'i', 'e')
if not g[1] then return 0 end
if g[1] ~= ARGV[4] or g[2] ~= ARGV[5] then return 'moved' end
-- No revocation without its audit event.
local refused = audit_refusal(redis.call('TYPE', KEYS[3])['ok'], KEYS[3])
if refused then return refused end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[2], expiry_member(ARGV[1], g[1], g[2]))
local ev = cjson.decode(ARGV[3])
ev['task'] = g[1]
ev['identity'] = g[2]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', cjson.encode(ev))
redis.call('XADD', KEYS[4], '*', 'k', 'jti', 'v', ARGV[1], 'n', g[3], 'x', g[3])
return {g[1], g[2]}
