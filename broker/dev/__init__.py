"""Development tools, never used by a deployed broker: `errand run`'s stack (run.py), a local
OIDC issuer that mints GitHub-shaped tokens (issuer.py) and a throwaway redis-server
(embedded_redis.py). Tests and benchmark scripts use the same pieces."""
