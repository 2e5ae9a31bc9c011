"""Errand's own tokens: signing keys, minting (RFC 9068) and verification."""
