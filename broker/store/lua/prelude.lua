-- Put in front of every script when it loads (broker/store/lua_scripts.py). The key
-- prefixes below are filled in from broker/store/keys.py at load time: no script spells one.
local GRANT = '{{GRANT}}'  -- hash: one grant (keys.grant)
local TASK = '{{TASK}}'    -- zset jti -> exp: a task's grants (keys.task_index)
local IDENT = '{{IDENT}}'  -- zset jti -> exp: an identity's grants (keys.identity_index)

-- The expiry index (keys.EXPIRY_INDEX) names a grant as "jti task identity".
local function expiry_member(jti, task, ident)
  return jti .. ' ' .. task .. ' ' .. ident
end

-- jti, task, identity of an expiry-index member; nil for a malformed one.
local function parse_expiry_member(member)
  return string.match(member, '^(%S+) (%S+) (%S+)$')
end

-- Take a grant out of its task's and its identity's index (its hash is left alone).
local function unindex_grant(jti, task, ident)
  redis.call('ZREM', TASK .. task, jti)
  redis.call('ZREM', IDENT .. ident, jti)
end

-- Drop a grant and every index entry it has: the hash, the task and identity indexes and
-- its member of the expiry index `expiry`. The hash goes first: should a later command
-- fail, the token is already dead, and the leftovers are index entries the sweep removes.
local function drop_grant(expiry, jti, task, ident)
  redis.call('DEL', GRANT .. jti)
  unindex_grant(jti, task, ident)
  redis.call('ZREM', expiry, expiry_member(jti, task, ident))
end
