-- sweep: remove expired grants from every index and record each in the audit stream
-- (store/grants.py RedisGrants.sweep_expired). The grant hashes have already gone by TTL.
--
-- KEYS[1] expiry index, KEYS[2] audit stream.
-- ARGV[1] now (members scored at or before it have expired), ARGV[2] audit stream maxlen,
-- ARGV[3] the events' timestamp, then pairs: an expiry-index member read by the caller, and
-- the HMAC of its jti under the audit key (broker/domain/audit_hmac.py), which Lua cannot
-- compute: the event carries `jti_hmac`, never the jti.
-- Returns how many of the members it removed (a member a concurrent sweep already removed,
-- or one no longer expired, is skipped).
--
-- Redis does not roll a script back. The checks come first: the audit stream can take the
-- events (prelude audit_refusal). Then each member is handled whole (indexes, audit event,
-- then its expiry-index entry last), and a run stopped by an error leaves that member in the
-- expiry index for the next sweep, whose removals repeat harmlessly.
local refused = audit_refusal(KEYS[2])
if refused then return refused end
local removed = 0
for i = 4, #ARGV - 1, 2 do
  local m = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], m)
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    local jti, task, ident = parse_expiry_member(m)
    if jti then
      unindex_grant(jti, task, ident)
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e',
        cjson.encode({ts = tonumber(ARGV[3]), event = 'grant.expired', outcome = 'expired',
                      jti_hmac = ARGV[i + 1], task = task, identity = ident}))
    end
    redis.call('ZREM', KEYS[1], m)
    removed = removed + 1
  end
end
return removed
