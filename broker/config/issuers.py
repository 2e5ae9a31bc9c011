"""The `issuers:` section across its entries: ids and URLs listed once, key files found
relative to the configuration, and warnings for choices that are legal but risky."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from broker.domain.models import AGENT_ISSUER_PREFIX, TrustedIssuer

PLAIN_HTTP_WARNING = (
    "plain http (accepted for a loopback host only): for development; use https in production"
)


def issuers_from(
    loaded: Sequence[TrustedIssuer], base_dir: Path, errors: list[str], warnings: list[str]
) -> dict[str, TrustedIssuer]:
    """The issuers by id; problems are appended to `errors` and `warnings`."""
    issuers: dict[str, TrustedIssuer] = {}
    for i, issuer in enumerate(loaded):
        if issuer.id in issuers:
            errors.append(f"issuers.{i}.id: duplicate issuer id {issuer.id!r}")
        if issuer.id.startswith(AGENT_ISSUER_PREFIX):
            errors.append(f"issuers.{i}.id: ids starting with {AGENT_ISSUER_PREFIX!r} are reserved")
        if issuer.issuer and any(other.issuer == issuer.issuer for other in issuers.values()):
            errors.append(f"issuers.{i}.issuer: issuer URL listed twice")
        if (
            issuer.profile == "spiffe"
            and not issuer.issuer
            and any(
                o.profile == "spiffe" and not o.issuer and o.trust_domain == issuer.trust_domain
                for o in issuers.values()
            )
        ):
            errors.append(f"issuers.{i}.trust_domain: trust domain listed twice")
        if issuer.jwks_file:
            path = Path(issuer.jwks_file)
            if not path.is_absolute():
                path = base_dir / path
            issuer = dataclasses.replace(issuer, jwks_file=str(path))
            if not path.is_file():
                warnings.append(f"issuers.{i}.jwks_file: {path} does not exist (yet)")
        for name in ("issuer", "jwks_uri"):
            if (getattr(issuer, name) or "").startswith("http:"):
                warnings.append(f"issuers.{i}.{name}: {PLAIN_HTTP_WARNING}")
        if issuer.replay == "reuse-within-lifetime" and issuer.profile in (
            "github-actions",
            "gitlab-ci",
        ):
            warnings.append(
                f"issuers.{i}.replay: {issuer.profile} tokens carry a jti and are requested per "
                "job; reuse-within-lifetime lets a leaked token be exchanged again"
            )
        issuers[issuer.id] = issuer
    return issuers
