-- drop_grants: delete some grants of one task bucket and their task-index entries, each
-- only if it is still there and passes the filter (store/grant_steps.py; the revoke-all
-- clean-up, bulk revocation, and revocation on a cluster).
--
-- KEYS: pairs, one per grant: KEYS[2k-1] its hash, KEYS[2k] its task's index; all in one
-- task bucket ({t.BBB}), so one slot.
-- ARGV[1] epoch cut ('' for none: only grants stamped before it go), ARGV[2] issuer id
-- ('' for any), ARGV[3..] the jtis, in the order of the pairs.
-- Returns {status, task, identity, exp} per grant: status 2 dropped, 1 kept (it passed no
-- filter), 0 gone already (task, identity and exp are then '').
--
-- Redis does not roll a script back: each grant is read and checked before anything of it
-- is written, and its hash goes first, so should a command fail, every grant it reached is
-- already dead; what is left is index entries the sweep removes. The identity index and
-- the expiry index live in other slots: the caller removes those entries next.
local out = {}
local cut = tonumber(ARGV[1])
for k = 1, #KEYS / 2 do
  local jti = ARGV[k + 2]
  local g = redis.call('HMGET', KEYS[2 * k - 1], 't', 'i', 'e', 'u', 'p')
  if not g[1] then
    out[#out + 1] = 0; out[#out + 1] = ''; out[#out + 1] = ''; out[#out + 1] = ''
  elseif (cut and g[5] and tonumber(g[5]) >= cut) or (ARGV[2] ~= '' and ARGV[2] ~= g[4]) then
    out[#out + 1] = 1; out[#out + 1] = g[1]; out[#out + 1] = g[2]; out[#out + 1] = g[3]
  else
    redis.call('DEL', KEYS[2 * k - 1])
    redis.call('ZREM', KEYS[2 * k], jti)
    out[#out + 1] = 2; out[#out + 1] = g[1]; out[#out + 1] = g[2]; out[#out + 1] = g[3]
  end
end
return out
