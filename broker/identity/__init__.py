"""Workload-identity verification: from a caller's JWT to a verified subject."""
