"""Verify a workload-identity JWT from a configured issuer (RFC 8725 order of checks).

size -> shape (three segments, each canonical base64url) -> header allow-list -> issuer (the
unverified `iss` only selects a configured issuer) -> key (kid looked up in that issuer's
JWKS; the algorithm comes from the key) -> signature -> registered claims (exact iss; our
audience, alone unless the issuer allows several; `azp`, when present, ours or the expected
client; exp/nbf/iat with bounded skew, numeric dates that are numbers, bounded lifetime) ->
no delegation claims (`act`, `may_act`) -> the issuer profile's own checks
(broker/identity/profiles.py) -> jti shape per the issuer's replay policy.

The same path verifies every workload JWT: CI OIDC tokens, Kubernetes projected
service-account tokens, SPIFFE JWT-SVIDs and agents' own assertions, whether they arrive as
an RFC 8693 `subject_token` or an RFC 7523 `assertion`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from broker.domain.models import Config, TrustedIssuer, VerifiedSubject
from broker.identity.errors import BadSignature, ClaimInvalid, MalformedToken, UnknownIssuer
from broker.identity.jwks import JwksCache
from broker.identity.profiles import parse_spiffe_id, profile_for
from errand_jose import ASYMMETRIC_ALGORITHMS, JoseError, read_compact_jws, verify_signature

MAX_KID_CHARS = 256
MAX_JTI_CHARS = 256
TOKEN_ENDPOINT_PATH = "/token"  # broker/http/token.py serves it under the issuer URL


def token_sha256(token: str) -> str:
    """What audit and logs hold instead of a token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _numeric_date(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise ClaimInvalid(f"the token has no '{name}' claim", reason="missing_claim")
        return None
    # bool is an int in Python; numeric strings are not NumericDates (RFC 7519 §2).
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ClaimInvalid(f"the token's '{name}' claim is not a number")
    if not 0 <= value < 1e11:
        raise ClaimInvalid(f"the token's '{name}' claim is out of range")
    return float(value)


def route_issuer(config: Config, unverified_payload: Mapping[str, Any]) -> TrustedIssuer:
    """The configured issuer an unverified token selects; nothing else is read from it.

    `iss` selects a configured issuer by exact URL, or an identity that registered its own
    keys (iss = identity id). A token without `iss` can only be a SPIFFE JWT-SVID: its `sub`
    names the trust domain whose bundle verifies it."""
    unverified_iss = unverified_payload.get("iss")
    if unverified_iss is None:
        unverified_sub = unverified_payload.get("sub")
        parsed = parse_spiffe_id(unverified_sub)
        if parsed is not None:
            issuer = config.issuer_by_trust_domain(parsed[0])
            if issuer is None:
                raise UnknownIssuer(
                    "the token's trust domain is not trusted",
                    debug=f"trust_domain={parsed[0][:200]}",
                )
            return issuer
        raise MalformedToken("the token has no issuer")
    if not isinstance(unverified_iss, str):
        raise MalformedToken("the token has no issuer")
    issuer = config.issuer_by_url(unverified_iss)
    if issuer is None:
        raise UnknownIssuer("the token's issuer is not trusted", debug=unverified_iss[:200])
    return issuer


# RFC 8693 §4.1 `act` (who is acting) and §4.4 `may_act` (who may act): a token carrying
# either speaks of delegation. Errand's delegation path (domain/delegation.py) reads them from
# its own access tokens only; a workload token carrying them is accepted nowhere, neither as
# a subject, an assertion nor an actor token.
DELEGATION_CLAIMS = ("act", "may_act")


def verify_audience(
    claims: Mapping[str, Any], issuer: TrustedIssuer, token_endpoint: str | None = None
) -> bool:
    """RFC 7519 §4.1.3 lets `aud` be a list; we accept only the list we are alone in unless the
    issuer allows several audiences. `azp` (OIDC Core §2), when present, must name us or the
    issuer's expected client: a token obtained by another party is not ours to accept.

    `token_endpoint`, on the jwt-bearer grant only: RFC 7523 §3 (and the MCP Workload
    Identity Federation extension) address an assertion to the token endpoint URL, which is
    then accepted in place of the issuer's configured audience. True when it was."""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    debug = f"aud={aud!r}"[:300]  # the values compared go to the audit event only
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise ClaimInvalid(
            "the token's 'aud' claim is malformed", reason="wrong_audience", debug=debug
        )
    ours = {issuer.audience} | ({token_endpoint} if token_endpoint else set())
    matched = [a for a in audiences if a in ours]
    if not matched:
        raise ClaimInvalid(
            "the token's 'aud' claim does not name this broker",
            reason="wrong_audience",
            debug=debug,
        )
    options = issuer.options
    if len(audiences) != 1 and not options.allow_multiple_audiences:
        # strict_aud: we must be the only audience, or the token could be replayed at a peer
        raise ClaimInvalid(
            "the token's 'aud' claim names other parties too",
            reason="multiple_audiences",
            debug=debug,
        )
    allowed_azp = {issuer.audience} | ({options.expected_azp} if options.expected_azp else set())
    azp = claims.get("azp")
    if "azp" in claims and not (isinstance(azp, str) and azp in allowed_azp):
        raise ClaimInvalid(
            "the token's 'azp' claim names another party",
            reason="wrong_azp",
            debug=f"azp={azp!r}"[:300],
        )
    return (
        token_endpoint is not None
        and token_endpoint != issuer.audience
        and token_endpoint in audiences
    )


def verify_no_delegation(claims: Mapping[str, Any]) -> None:
    """A workload token that says someone acts (or may act) for its subject is refused, never
    read as its plain subject: delegation chains start from an Errand access token, presented
    as subject_token together with the actor's own actor_token (docs/agents.md)."""
    present = [name for name in DELEGATION_CLAIMS if name in claims]
    if present:
        raise ClaimInvalid(
            f"the token carries delegation claims ('{present[0]}'); delegate with an Errand "
            "access token as subject_token and an actor_token",
            reason="delegation_unsupported",
        )


class SubjectTokenVerifier:
    def __init__(self, config: Config, jwks: JwksCache) -> None:
        self._config = config
        self._jwks = jwks

    @property
    def config(self) -> Config:
        return self._config

    def verify(
        self,
        token: str,
        *,
        now: float,
        on_issuer: Callable[[TrustedIssuer], None] | None = None,
        token_endpoint_audience: bool = False,
    ) -> VerifiedSubject:
        """Verify a workload token. `on_issuer` runs once the unverified `iss` has selected a
        configured issuer and before any key fetch or signature work (rate limits).
        `token_endpoint_audience` (the jwt-bearer grant): an `aud` of our token endpoint URL
        is accepted too, and such an assertion must carry a `jti`, spent on first use."""
        broker = self._config.broker
        try:
            parsed = read_compact_jws(token, max_bytes=broker.max_subject_token_bytes)
        except JoseError as err:
            raise MalformedToken(f"the token is malformed: {err}") from err
        header = parsed.header
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise MalformedToken("the token's algorithm is not allowed", debug=f"alg={alg!r}"[:100])
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            # at+jwt (our own access tokens) and other typed JWTs are not identity tokens.
            raise MalformedToken("the token's type is not accepted", debug=f"typ={typ!r}"[:100])
        if "crit" in header:
            raise MalformedToken("the token has critical header parameters we do not support")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS):
            raise MalformedToken("the token's key id is malformed")
        # jku, x5u, x5c and jwk are ignored: keys come only from the configured issuer's JWKS.

        issuer = route_issuer(self._config, parsed.payload)
        if on_issuer is not None:
            on_issuer(issuer)
        if alg not in issuer.algorithms:
            raise MalformedToken("the token's algorithm is not allowed for its issuer")

        key = self._jwks.key_for(issuer, kid)
        if key.alg != alg:
            raise BadSignature("the token's algorithm does not match its key")
        profile = profile_for(issuer)
        required = ["aud", "exp"]
        if issuer.issuer:
            required.append("iss")
        if issuer.profile != "spiffe":
            required.append("iat")  # JWT-SVIDs need not carry iat (SPIFFE JWT-SVID §3)
        if not verify_signature(parsed, key.key, key.alg):
            raise BadSignature("the token's signature is invalid")
        claims: dict[str, Any] = parsed.payload  # decoded from the bytes just verified
        for name in required:
            if name not in claims:
                raise ClaimInvalid(f"the token has no '{name}' claim", reason="missing_claim")
        if issuer.issuer and claims.get("iss") != issuer.issuer:
            raise ClaimInvalid("the token's 'iss' claim does not match", reason="wrong_issuer")
        token_endpoint = (
            self._config.broker.issuer.rstrip("/") + TOKEN_ENDPOINT_PATH
            if token_endpoint_audience
            else None
        )
        # An assertion addressed to the token endpoint is one-shot by design (RFC 7523 §3
        # item 7, the MCP WIF extension): its jti is required and spent, whatever the
        # issuer's replay policy for tokens addressed to its configured audience.
        single_use = verify_audience(claims, issuer, token_endpoint)

        if not issuer.issuer and "iss" in claims:
            # Routed by trust domain: an SVID that names an issuer must be configured by it.
            raise ClaimInvalid("the token's 'iss' claim does not match", reason="wrong_issuer")

        skew = broker.clock_skew_seconds
        exp = _numeric_date(claims, "exp", True)
        iat = _numeric_date(claims, "iat", "iat" in required)
        nbf = _numeric_date(claims, "nbf", False)
        assert exp is not None
        if exp <= now - skew:
            raise ClaimInvalid("the token has expired", reason="expired")
        if iat is not None and iat > now + skew:
            raise ClaimInvalid("the token's 'iat' is in the future", reason="issued_in_future")
        if nbf is not None and nbf > now + skew:
            raise ClaimInvalid("the token is not valid yet", reason="not_yet_valid")
        if exp - (iat if iat is not None else now) > issuer.max_token_lifetime_seconds:
            raise ClaimInvalid(
                "the token's lifetime is longer than this issuer allows", reason="lifetime_too_long"
            )
        verify_no_delegation(claims)
        attributes, context = profile.read(claims, issuer)

        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS):
            raise ClaimInvalid("the token's 'jti' claim is malformed")
        if issuer.replay == "single-use" and jti is None:
            raise ClaimInvalid(
                "the token has no 'jti' claim, which this issuer requires", reason="missing_claim"
            )
        if single_use and jti is None:
            raise ClaimInvalid(
                "an assertion addressed to the token endpoint must carry a 'jti' claim",
                reason="missing_claim",
            )
        return VerifiedSubject(
            issuer=issuer,
            claims=claims,
            jti=jti,
            exp=int(exp),
            token_sha256=token_sha256(token),
            attributes=attributes,
            context=context,
            single_use=single_use,
        )
