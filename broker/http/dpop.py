"""The `DPoP` header of a token request (RFC 9449 §5): read here, checked by the domain
(broker/domain/dpop.py), before the exchange starts; and the `DPoP-Nonce` header a response
carries when the broker requires nonces (§8.2: a fresh one on every answer)."""

from __future__ import annotations

from dataclasses import replace

from flask import request

from broker.domain.dpop import check_dpop_header, issue_nonce
from broker.domain.models import ExchangeRequest
from broker.domain.ports import Services


def with_dpop(req: ExchangeRequest, svc: Services) -> ExchangeRequest:
    """`req` with its checked proof, if the request carries one. Raises InvalidDpopProof or
    UseDpopNonce."""
    binding = check_dpop_header(request.headers.getlist("DPoP"), svc.config, svc.clock.now())
    return replace(req, dpop=binding) if binding is not None else req


def nonce_headers(svc: Services) -> dict[str, str]:
    options = svc.config.dpop
    if not options.require_nonce:
        return {}
    return {"DPoP-Nonce": issue_nonce(options, svc.clock.now())}
