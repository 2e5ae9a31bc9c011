-- Put in front of every script when it loads (broker/store/lua_scripts.py). The key
-- prefixes below are filled in from broker/store/keys.py at load time: no script spells one.
local GRANT = '{{GRANT}}'  -- hash: one grant (keys.grant)
local TASK = '{{TASK}}'    -- zset jti -> exp: a task's grants (keys.task_index)
local IDENT = '{{IDENT}}'  -- zset jti -> exp: an identity's grants (keys.identity_index)
local CHILDREN = '{{CHILDREN}}'  -- zset jti -> exp: a grant's delegation hops (keys.children_index)

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

-- Revoke every delegation hop below grant `jti` (RFC 8693 chains, store/chains.py): each live
-- one is dropped like drop_grant and published on the feed `feed` with its parent ('p'),
-- since no coarser entry covers another identity's hop. Breadth first, through the children
-- indexes; a chain is at most max_delegation_depth deep, and at most `limit` grants are
-- visited, so the script's time is bounded. Returns the revoked jtis.
-- Redis does not roll a script back: each hop's hash is deleted before anything else of it,
-- so should a command fail, every hop reached is already dead.
local function revoke_descendants(expiry, feed, jti, limit)
  local queue, head, revoked = {jti}, 1, {}
  while queue[head] and head <= limit do
    local parent = queue[head]
    head = head + 1
    local kids = redis.call('ZRANGE', CHILDREN .. parent, 0, -1)
    if #kids > 0 then redis.call('DEL', CHILDREN .. parent) end
    for _, child in ipairs(kids) do
      local g = redis.call('HMGET', GRANT .. child, 't', 'i', 'e')
      if g[1] then
        drop_grant(expiry, child, g[1], g[2])
        redis.call('XADD', feed, '*', 'k', 'jti', 'v', child, 'n', g[3], 'x', g[3], 'p', parent)
        revoked[#revoked + 1] = child
      end
      queue[#queue + 1] = child
    end
  end
  return revoked
end

-- The refusal of a change whose audit event could not be appended to the audit stream
-- `stream` (it holds another type), or nil. Called before a script's first write, so the
-- change and its event are written together or not at all; the store answers the error
-- with AuditUnavailable (broker/domain/audit_failure.py).
local function audit_refusal(stream)
  local have = redis.call('TYPE', stream)['ok']
  if have ~= 'none' and have ~= 'stream' then
    return redis.error_reply('ERRAND_AUDIT ' .. stream .. ' holds a ' .. have)
  end
  return nil
end
