"""RQ jobs. Each takes ids, reloads state, is idempotent, and reuses the domain."""
