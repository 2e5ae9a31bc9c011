"""Per-issuer options of the subject-token checks and of the key fetch.

They ride on `ConfiguredIssuer`, a TrustedIssuer with one more field, so every function that
takes a TrustedIssuer keeps working; `options_of` gives the defaults (the strict choice each
time) for an issuer built without them."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.domain.models import TrustedIssuer


@dataclass(frozen=True)
class IssuerOptions:
    # Hosts (`host` or `host:port`, lower case) a discovered https `jwks_uri` may name besides
    # the issuer's own origin. Empty: the issuer's origin only.
    jwks_hosts: tuple[str, ...] = ()
    # Let key fetches reach private addresses (RFC 1918, unique-local, CGNAT) and loopback.
    # Link-local (cloud metadata), multicast and unspecified addresses stay refused.
    allow_private_network: bool = False
    # strict_aud off: the token may name other audiences besides ours (some platforms mint
    # one token for several relying parties). Default: we must be the only audience, or the
    # token could be replayed at a peer.
    allow_multiple_audiences: bool = False
    # The one client, besides our own audience, an `azp` claim may name.
    expected_azp: str | None = None


DEFAULT_OPTIONS = IssuerOptions()


@dataclass(frozen=True)
class ConfiguredIssuer(TrustedIssuer):
    options: IssuerOptions = field(default=DEFAULT_OPTIONS)

    @property
    def key_source(self) -> tuple[object, ...]:
        # Where keys may be fetched from is part of where they come from: narrowing it on a
        # reload must drop keys fetched under the old rules.
        return (
            *super().key_source,
            self.options.jwks_hosts,
            self.options.allow_private_network,
        )


def options_of(issuer: TrustedIssuer) -> IssuerOptions:
    return issuer.options if isinstance(issuer, ConfiguredIssuer) else DEFAULT_OPTIONS
