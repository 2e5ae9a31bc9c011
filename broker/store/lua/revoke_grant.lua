-- revoke_grant: revoke one grant, record it in the audit stream and publish it on the
-- revocation feed (store/grants.py RedisGrants.revoke_grant).
--
-- KEYS[1] grant hash, KEYS[2] expiry index, KEYS[3] audit stream, KEYS[4] revocation feed.
-- ARGV[1] jti, ARGV[2] audit stream maxlen, ARGV[3] audit event JSON (the task and identity
-- are added here, from the grant).
-- Returns {task, identity, revoked hop jtis...}, or 0 when the grant was not live.
-- Every delegation hop below the grant is revoked with it (prelude revoke_descendants) and
-- listed in the audit event as `descendants`.
--
-- The task and identity index keys come from the grant's own fields.
-- Redis does not roll a script back: the checks (is the grant live? can the audit stream
-- take the event?) come before the first write, and that write deletes the grant, so should a later command fail the token
-- is already dead.
local g = redis.call('HMGET', KEYS[1], 't', 'i', 'e')
if not g[1] then return 0 end
local refused = audit_refusal(KEYS[3])  -- no revocation without its audit event
if refused then return refused end
drop_grant(KEYS[2], ARGV[1], g[1], g[2])
redis.call('XADD', KEYS[4], '*', 'k', 'jti', 'v', ARGV[1], 'n', g[3], 'x', g[3])
local below = revoke_descendants(KEYS[2], KEYS[4], ARGV[1], 10000)
local ev = cjson.decode(ARGV[3])
ev['task'] = g[1]
ev['identity'] = g[2]
if #below > 0 then ev['descendants'] = below end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', cjson.encode(ev))
return {g[1], g[2], unpack(below)}
