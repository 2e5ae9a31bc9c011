-- fanout_batch: one revoke-all clean-up batch over the expiry index (store/revocations.py
-- RedisRevocationStore.fanout_batch). Grants stamped with an older epoch are removed; newer
-- ones are skipped (survivors).
--
-- KEYS[1] expiry index. ARGV[1] the epoch of the cut, ARGV[2] offset, ARGV[3] batch size.
-- Returns {members examined, grants revoked, survivors}.
--
-- Redis does not roll a script back: each member's epoch is read before anything of it is
-- written, and the grant hash goes first. These grants are already inactive (the epoch cut
-- did that): should a command fail, what is left is clean-up the next batch or the sweep
-- repeats.
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local revoked, survivors = 0, 0
local epoch = tonumber(ARGV[1])
for _, m in ipairs(members) do
  local jti, task, ident = parse_expiry_member(m)
  local p = redis.call('HGET', GRANT .. (jti or ''), 'p')
  if jti and p and tonumber(p) >= epoch then
    survivors = survivors + 1
  else
    if jti then
      drop_grant(KEYS[1], jti, task, ident)  -- its expiry member is `m`
    else
      redis.call('ZREM', KEYS[1], m)
    end
    if p then revoked = revoked + 1 end
  end
end
return {#members, revoked, survivors}
