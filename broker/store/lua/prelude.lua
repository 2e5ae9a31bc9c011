-- Put in front of every script when it loads (broker/store/lua_scripts.py): the functions
-- several scripts share. No script builds a key name: every key it touches comes in KEYS
-- (Redis Cluster routes a script by its KEYS; docs/architecture.md, "Redis key scheme").

-- The expiry index (keys.EXPIRY_INDEX) names a grant as "jti task identity".
local function expiry_member(jti, task, ident)
  return jti .. ' ' .. task .. ' ' .. ident
end
