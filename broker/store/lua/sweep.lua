-- sweep: remove expired grants from every index and record each in the audit stream
-- (store/grants.py RedisGrants.sweep_expired). The grant hashes have already gone by TTL.
--
-- KEYS[1] expiry index, KEYS[2] audit stream.
-- ARGV[1] now (members scored at or before it have expired), ARGV[2] batch size,
-- ARGV[3] audit stream maxlen, ARGV[4] the events' timestamp.
-- Returns how many members it removed.
--
-- Redis does not roll a script back, and no check follows a write: each member is handled
-- whole (indexes, audit event, then its expiry-index entry last), and a run stopped by an
-- error leaves that member in the expiry index for the next sweep, whose removals repeat
-- harmlessly.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(members) do
  local jti, task, ident = parse_expiry_member(m)
  if jti then
    unindex_grant(jti, task, ident)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e',
      cjson.encode({ts = tonumber(ARGV[4]), event = 'grant.expired', outcome = 'expired',
                    jti = jti, task = task, identity = ident}))
  end
  redis.call('ZREM', KEYS[1], m)
end
return #members
