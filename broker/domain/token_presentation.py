"""Our access token as the caller's credential at our own endpoints (the task lifecycle):
Bearer for an unbound token (RFC 6750 §2.1), the `DPoP` scheme and a proof for a bound one
(RFC 9449 §7.1).

A token with `cnf.jkt` is useless without its key: presented as Bearer it is refused
(`invalid_token`), and with the DPoP scheme it needs exactly one proof naming this request
(`htm`, `htu` = our issuer + the path, never the Host header), carrying the token's hash
(`ath`), signed by the key the token names, fresh, and never seen before (its jti is spent
in Redis per key, as at the token endpoint). When the broker requires nonces, a proof
without a current one is answered `use_dpop_nonce` with the nonce to use (§9).

The proof is checked right after the token's signature and expiry, before anything of the
task is read or moved: a thief holding a bound token learns nothing and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.domain.dpop import DPOP_LEEWAY_SECONDS, claim_proof, is_fresh_nonce, issue_nonce
from broker.domain.models import DpopBinding
from broker.domain.ports import Services
from broker.errors import DpopTokenRefused, InvalidDpopProof, InvalidToken
from errand_jose import DpopError, check_proof

BEARER = "bearer"
DPOP = "dpop"


@dataclass(frozen=True)
class PresentedToken:
    """An access token as a request presented it: the scheme of its Authorization header,
    the request's DPoP headers, and the method and path a proof must name."""

    token: str
    scheme: str = BEARER  # "bearer" | "dpop", lower-cased
    proofs: tuple[str, ...] = ()
    method: str = ""
    path: str = ""

    def __repr__(self) -> str:  # never the token or a proof in a log line
        return f"PresentedToken(scheme={self.scheme!r}, method={self.method!r}, path={self.path!r})"


def bound_key(claims: dict[str, Any]) -> str | None:
    """The thumbprint a token is bound to (`cnf.jkt`, RFC 9449 §6.1), None if unbound."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) and jkt else None


def check_presentation(claims: dict[str, Any], presented: PresentedToken, svc: Services) -> None:
    """Refuse a token presented without what its binding asks for. `claims` are the verified
    claims of `presented.token` (signature, issuer and expiry already checked)."""
    jkt = bound_key(claims)
    if jkt is None:
        if presented.scheme != BEARER:
            # Nothing to prove possession of: the DPoP scheme with an unbound token is a
            # client that got its binding wrong (errand_rs refuses it the same way).
            raise InvalidToken(
                "the access token is not DPoP-bound: present it as Bearer", reason="not_bound"
            )
        return
    options = svc.config.dpop
    if presented.scheme != DPOP:
        raise DpopTokenRefused(
            "the access token is DPoP-bound: present it with the DPoP scheme and a proof",
            error="invalid_token",
            algs=options.algorithms,
            reason="dpop_bound_as_bearer",
        )
    if len(presented.proofs) != 1:
        raise _invalid_proof("send exactly one DPoP header", "dpop_header_count", svc)
    now = svc.clock.now()
    try:
        proof = check_proof(
            presented.proofs[0],
            method=presented.method,
            url=svc.config.broker.issuer.rstrip("/") + presented.path,
            now=now,
            max_age_seconds=options.proof_max_age_seconds,
            leeway_seconds=DPOP_LEEWAY_SECONDS,
            algorithms=options.algorithms,
            access_token=presented.token,
            nonce_ok=(lambda n: is_fresh_nonce(options, n, now)) if options.require_nonce else None,
        )
    except DpopError as err:
        if err.error == "use_dpop_nonce":
            raise DpopTokenRefused(
                "a fresh DPoP nonce is required",
                error="use_dpop_nonce",
                algs=options.algorithms,
                reason="dpop_nonce",
                nonce=issue_nonce(options, now),
            ) from err
        raise _invalid_proof(err.message, f"dpop_{err.reason}", svc) from err
    if proof.jkt != jkt:
        # A valid proof by another key: the thief's own key proves nothing about this token.
        raise _invalid_proof(
            "the DPoP proof is not signed by the key the token is bound to", "dpop_wrong_key", svc
        )
    try:
        claim_proof(svc.dpop_replay, DpopBinding(jkt=jkt, jti=proof.jti, iat=proof.iat), options)
    except InvalidDpopProof as err:
        raise _invalid_proof(err.description, err.reason, svc) from err


def _invalid_proof(description: str, reason: str, svc: Services) -> DpopTokenRefused:
    return DpopTokenRefused(
        description, error="invalid_dpop_proof", algs=svc.config.dpop.algorithms, reason=reason
    )
