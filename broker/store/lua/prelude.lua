-- Put in front of every script when it loads (broker/store/lua_scripts.py): the functions
-- several scripts share. No script builds a key name: every key it touches comes in KEYS
-- (Redis Cluster routes a script by its KEYS; docs/architecture.md, "Redis key scheme").

-- The expiry index (keys.EXPIRY_INDEX) names a grant as "jti task identity".
local function expiry_member(jti, task, ident)
  return jti .. ' ' .. task .. ' ' .. ident
end

-- The refusal of a change whose audit event could not be appended to the audit stream
-- `stream`, whose TYPE the caller read (`have`): nil when it can take the event. Called
-- before a script's first write, so the change and its event are written together or not
-- at all; the store answers the error with AuditUnavailable (broker/domain/audit_failure.py).
local function audit_refusal(have, stream)
  if have ~= 'none' and have ~= 'stream' then
    return redis.error_reply('ERRAND_AUDIT ' .. stream .. ' holds a ' .. have)
  end
  return nil
end
