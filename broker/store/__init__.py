"""Storage: every Redis command Errand sends lives in this package.

keys.py names every key; lua/ holds the Lua scripts (loaded by lua_scripts.py, with the
shared lua/prelude.lua in front and the key prefixes of keys.py filled in); connection.py
has connect() and store_errors(), the one place a RedisError becomes StoreUnavailable. The
rest is one module per concept: grants.py and grant_record.py, inventory_state.py,
audit_stream.py, revocations.py, limits.py, jwks_mirror.py, auth_failures.py; redis.py only
puts grants, identity state and the audit stream together as svc.store."""
