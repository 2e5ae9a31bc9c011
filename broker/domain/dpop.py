"""Sender-constrained tokens at the token endpoint (RFC 9449 §5, §6, §8).

A token request may carry one `DPoP` header: a proof, signed by the client's key, that it
made this very request (`htm` POST, `htu` our token endpoint, a fresh `iat` and `jti`).
The proof is checked before the exchange starts (errand_jose.dpop, no Redis), so a bad proof
costs nothing and spends nothing; the issued token then carries `cnf.jkt`, the key's
RFC 7638 thumbprint, and `token_type` is `DPoP`.

The proof's jti is spent in Redis only once every check of the exchange has passed, just
before the grant write (`claim_proof`): a request refused for any other reason leaves it
unspent. A write that then refuses (a race with completion or revoke-all) leaves it spent;
that costs the client nothing, since every request carries a new proof (RFC 9449 §4.2),
and only the key's holder can make a proof under that key.

Nonces (§8) are stateless: base64url(window ‖ HMAC-SHA256(secret, window)[:16]) for the
current time window, accepted for that window and the one before. Every node with the same
secret accepts every node's nonces; nothing is stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Sequence

from broker.domain.models import (
    Config,
    DpopBinding,
    DpopOptions,
    ExchangeRequest,
    IdentityTypeRules,
)
from broker.domain.ports import DpopReplayCache
from broker.errors import InvalidDpopProof, UseDpopNonce
from errand_jose import DpopError, check_proof

DPOP_LEEWAY_SECONDS = 5  # a proof's iat may be this far in the future (clock skew)
_NONCE_LABEL = b"errand-dpop-nonce\x00"


def token_endpoint(config: Config) -> str:
    """The URL every proof's `htu` must name: the one metadata advertises."""
    return config.broker.issuer.rstrip("/") + "/token"


def issue_nonce(options: DpopOptions, now: float) -> str:
    """The nonce for the current window (RFC 9449 §8.1), the same on every node."""
    window = int(now) // options.nonce_lifetime_seconds
    return _nonce(options.nonce_secret, window)


def _nonce(secret: bytes, window: int) -> str:
    packed = struct.pack(">Q", window)
    mac = hmac.new(secret, _NONCE_LABEL + packed, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(packed + mac).rstrip(b"=").decode("ascii")


def is_fresh_nonce(options: DpopOptions, nonce: str | None, now: float) -> bool:
    """A nonce this broker issued for this window or the one before."""
    if not nonce:
        return False
    window = int(now) // options.nonce_lifetime_seconds
    return any(
        hmac.compare_digest(nonce, _nonce(options.nonce_secret, w)) for w in (window, window - 1)
    )


def check_dpop_header(values: Sequence[str], config: Config, now: float) -> DpopBinding | None:
    """The checked proof of a token request's `DPoP` headers, None without one.

    Raises InvalidDpopProof (more than one header, or a proof that fails a check) or
    UseDpopNonce (nonces are required and the proof has none, or an old one)."""
    if not values:
        return None
    if len(values) != 1:
        # RFC 9449 §4.3: exactly one DPoP HTTP request header field.
        raise InvalidDpopProof("send exactly one DPoP header", reason="dpop_header_count")
    options = config.dpop
    try:
        proof = check_proof(
            values[0],
            method="POST",
            url=token_endpoint(config),
            now=now,
            max_age_seconds=options.proof_max_age_seconds,
            leeway_seconds=DPOP_LEEWAY_SECONDS,
            algorithms=options.algorithms,
            nonce_ok=(lambda n: is_fresh_nonce(options, n, now)) if options.require_nonce else None,
        )
    except DpopError as err:
        if err.error == "use_dpop_nonce":
            raise UseDpopNonce(issue_nonce(options, now), reason="dpop_nonce") from err
        raise InvalidDpopProof(err.message, reason=f"dpop_{err.reason}") from err
    return DpopBinding(jkt=proof.jkt, jti=proof.jti, iat=proof.iat)


def check_dpop_required(
    req: ExchangeRequest,
    rules: IdentityTypeRules,
    audiences: Sequence[str],
    options: DpopOptions,
) -> None:
    """The inventory may require DPoP per identity type or per audience: a request without
    a proof is refused rather than given a token that a thief could use."""
    if req.dpop is not None:
        return
    if rules.require_dpop:
        raise InvalidDpopProof("a DPoP proof is required for this identity", reason="dpop_required")
    if set(audiences) & set(options.required_audiences):
        raise InvalidDpopProof("a DPoP proof is required for this audience", reason="dpop_required")


def claim_proof(replay: DpopReplayCache, binding: DpopBinding | None, options: DpopOptions) -> None:
    """Spend the proof's jti (per key) for as long as its iat is accepted; a second use of
    the same proof is refused (RFC 9449 §11.1)."""
    if binding is None:
        return
    expires_at = binding.iat + options.proof_max_age_seconds + DPOP_LEEWAY_SECONDS + 1
    if not replay.claim_dpop_jti(binding.jkt, binding.jti, expires_at):
        raise InvalidDpopProof("the DPoP proof has already been used", reason="dpop_replayed")
