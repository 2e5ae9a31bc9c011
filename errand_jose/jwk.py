"""JWK members that hold private or symmetric key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1;
RFC 8037 §2).

A published or registered key set must hold none of them; a key taken from one is stripped of
them before use, so only the public part is ever loaded."""

from __future__ import annotations

# EC/OKP "d"; RSA "d", "p", "q", "dp", "dq", "qi" and "oth" (further primes); oct "k".
PRIVATE_JWK_MEMBERS: tuple[str, ...] = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
