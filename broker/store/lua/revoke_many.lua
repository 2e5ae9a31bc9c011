-- revoke_many: revoke a batch of grants (store/revocations.py
-- RedisRevocationStore.revoke_many).
--
-- KEYS[1] expiry index, KEYS[2] revocation feed, and optionally KEYS[3], the index the jtis
-- were read from: every jti passed leaves it, expired ones included, so a caller's loop ends.
-- ARGV[1] '1' to publish one feed entry per grant (when no coarser entry covers them),
-- ARGV[2] issuer filter ('' for any), ARGV[3..] the jtis.
-- Returns how many live grants it revoked, counting the delegation hops below them (revoked
-- too, and published one by one whatever ARGV[1] says: they are other identities'). Counting
-- them keeps a caller that pages through the expiry index by offset from skipping a grant.
--
-- Each grant is checked (live? from the issuer asked for?) before anything of it is
-- written, and its hash is the first thing deleted: Redis does not roll a script back, so
-- should a command fail, every grant it reached is already dead and the rest untouched.
local n = 0
for i = 3, #ARGV do
  local jti = ARGV[i]
  if KEYS[3] then redis.call('ZREM', KEYS[3], jti) end
  local g = redis.call('HMGET', GRANT .. jti, 't', 'i', 'e', 'u')
  if g[1] and (ARGV[2] == '' or ARGV[2] == g[4]) then
    drop_grant(KEYS[1], jti, g[1], g[2])
    if ARGV[1] == '1' then
      redis.call('XADD', KEYS[2], '*', 'k', 'jti', 'v', jti, 'n', g[3], 'x', g[3])
    end
    n = n + 1 + #revoke_descendants(KEYS[1], KEYS[2], jti, 10000)
  end
end
return n
