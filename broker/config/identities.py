"""The identity inventory: each identity checked against its issuers and its type's rules,
its own keys turned into a synthetic issuer, and no two identities able to match one token."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from broker.config.issuers import PLAIN_HTTP_WARNING
from broker.domain.models import (
    AGENT_ISSUER_PREFIX,
    AGENT_PROFILE,
    BUILTIN_IDENTITY_TYPES,
    AgentKeys,
    Allowance,
    BrokerOptions,
    DelegationPolicy,
    Identity,
    IdentityTypeRules,
    IssuerOptions,
    MatchRule,
    TrustedIssuer,
)
from broker.identity.jwks import parse_jwks
from broker.identity.profiles import PROFILES as PROFILE_TABLE
from broker.identity.profiles import rule_problems
from broker.policy.patterns import PatternError, compile_value, values_overlap


def identities_from(
    loaded: Sequence[Mapping[str, Any]],
    issuers: Mapping[str, TrustedIssuer],
    type_rules: Mapping[str, IdentityTypeRules],
    broker: BrokerOptions,
    errors: list[str],
    warnings: list[str],
) -> tuple[list[Identity], dict[str, TrustedIssuer]]:
    """The identities, and the synthetic issuers of those that register their own keys;
    problems are appended to `errors` and `warnings`."""
    identities: list[Identity] = []
    agent_issuers: dict[str, TrustedIssuer] = {}
    seen_ids: set[str] = set()
    for i, item in enumerate(loaded):
        where = f"identities.{i}"
        kind = item["type"]
        if item["id"] in seen_ids:
            errors.append(f"{where}.id: duplicate identity id {item['id']!r}")
        seen_ids.add(item["id"])
        rules = []
        for j, match in enumerate(item["match"]):
            issuer = issuers.get(match["issuer"])
            if issuer is None:
                errors.append(f"{where}.match.{j}.issuer: no issuer with id {match['issuer']!r}")
            else:
                _check_rule(issuer, kind, match["claims"], f"{where}.match.{j}", errors, warnings)
            rules.append(
                MatchRule(
                    id=f"{item['id']}#{j}",
                    issuer_id=match["issuer"],
                    claims=tuple(sorted(match["claims"].items())),
                )
            )
        keys = item["keys"]
        agent_keys: AgentKeys | None = None
        if keys is not None:
            if kind == "human":
                errors.append(
                    f"{where}.keys: a human identity signs in through a human issuer, not own keys"
                )
            agent_issuer = _agent_issuer(item["id"], keys, broker)
            agent_issuers[item["id"]] = agent_issuer
            agent_keys = AgentKeys(
                jwks_json=agent_issuer.jwks_json,
                jwks_uri=agent_issuer.jwks_uri,
                algorithms=agent_issuer.algorithms,
            )
            rules.append(
                MatchRule(
                    id=f"{item['id']}#keys",
                    issuer_id=agent_issuer.id,
                    claims=(("sub", item["id"]),),
                )
            )
            if keys.get("jwks") is not None:
                _check_inline_jwks(agent_issuer, f"{where}.keys.jwks", errors)
            if (keys.get("jwks_uri") or "").startswith("http:"):
                warnings.append(f"{where}.keys.jwks_uri: {PLAIN_HTTP_WARNING}")
        allow = item["allow"]
        rules_for_type = type_rules[kind]
        if rules_for_type.audiences is not None:
            outside = [a for a in allow["audiences"] if a not in rules_for_type.audiences]
            if outside:
                errors.append(
                    f"{where}.allow.audiences: {kind} identities are confined to "
                    f"identity_types.{kind}.audiences; not listed there: {', '.join(outside)}"
                )
        if allow["max_ttl_seconds"] > rules_for_type.max_ttl_seconds:
            warnings.append(
                f"{where}.allow.max_ttl_seconds: capped at {rules_for_type.max_ttl_seconds} "
                f"for {kind} identities"
            )
        identities.append(
            Identity(
                id=item["id"],
                type=kind,
                owner=item["owner"],
                purpose=item["purpose"],
                expires=item["expires"],
                rules=tuple(rules),
                allow=Allowance(
                    audiences=tuple(allow["audiences"]),
                    scopes=tuple(allow["scopes"]),
                    default_scopes=tuple(allow["default_scopes"]),
                    max_ttl_seconds=allow["max_ttl_seconds"],
                ),
                keys=agent_keys,
                delegation=_delegation(
                    item.get("delegation"), broker, f"{where}.delegation", errors
                ),
            )
        )

    # Two identities that could match one token make the mapping ambiguous: refuse the file.
    for a, b in combinations(identities, 2):
        for ra in a.rules:
            for rb in b.rules:
                if _rules_overlap(ra, rb):
                    errors.append(
                        f"identities: {a.id!r} ({ra.id}) and {b.id!r} ({rb.id}) could match "
                        "the same token; add a claim that tells them apart"
                    )
    return identities, agent_issuers


def _delegation(
    given: Mapping[str, Any] | None, broker: BrokerOptions, where: str, errors: list[str]
) -> DelegationPolicy | None:
    """An identity's `delegation:` rule: its patterns compiled now, so a bad one fails the
    load rather than a request; its depth within the broker's."""
    if given is None:
        return None
    for j, value in enumerate(given["act_for"]):
        try:
            compile_value(value)
        except PatternError as err:
            errors.append(f"{where}.act_for.{j}: {err}")
    max_depth = given.get("max_depth")
    if max_depth is not None and max_depth > broker.max_delegation_depth:
        errors.append(
            f"{where}.max_depth: must not exceed broker.max_delegation_depth "
            f"({broker.max_delegation_depth})"
        )
    return DelegationPolicy(
        act_for=tuple(given["act_for"]),
        max_depth=max_depth,
        serves=tuple(given.get("serves", ())),
    )


def _rules_overlap(a: MatchRule, b: MatchRule) -> bool:
    """Two rules can match one token unless some claim they share has values that no claim
    value can match both of (exact values differ, or patterns are provably disjoint)."""
    if a.issuer_id != b.issuer_id:
        return False
    da, db = dict(a.claims), dict(b.claims)
    return all(values_overlap(da[k], db[k]) for k in da.keys() & db.keys())


def type_rules_from(
    configured: Mapping[str, Mapping[str, Any]], errors: list[str]
) -> dict[str, IdentityTypeRules]:
    """Built-in type rules, tightened by the `identity_types:` section (never loosened)."""
    out = dict(BUILTIN_IDENTITY_TYPES)
    for name, given in configured.items():
        where = f"identity_types.{name}"
        base = BUILTIN_IDENTITY_TYPES[name]
        max_ttl = given.get("max_ttl_seconds") or base.max_ttl_seconds
        if max_ttl > base.max_ttl_seconds:
            errors.append(
                f"{where}.max_ttl_seconds: can only tighten the built-in {base.max_ttl_seconds}"
            )
        default = given.get("default_ttl_seconds")
        if default is not None and default > max_ttl:
            errors.append(f"{where}.default_ttl_seconds: must not exceed max_ttl_seconds")
        flags = {}
        for flag in ("require_task", "require_purpose", "single_audience", "require_dpop"):
            value = given.get(flag)
            if value is None:
                value = getattr(base, flag)
            elif getattr(base, flag) and not value:
                errors.append(
                    f"{where}.{flag}: the built-in rule requires it; it cannot be turned off"
                )
            flags[flag] = value
        audiences = given.get("audiences")
        out[name] = IdentityTypeRules(
            default_ttl_seconds=default,
            max_ttl_seconds=min(max_ttl, base.max_ttl_seconds),
            audiences=tuple(audiences) if audiences is not None else base.audiences,
            **flags,
        )
    return out


def _agent_issuer(
    identity_id: str, keys: Mapping[str, Any], broker: BrokerOptions
) -> TrustedIssuer:
    """The synthetic issuer for an identity's own keys: iss = sub = identity id, aud = our
    token endpoint, at most 5 minutes between iat and exp, every jti used once."""
    jwks = keys.get("jwks")
    return TrustedIssuer(
        id=AGENT_ISSUER_PREFIX + identity_id,
        issuer=identity_id,
        audience=broker.issuer.rstrip("/") + "/token",
        jwks_uri=keys.get("jwks_uri"),
        algorithms=tuple(keys["algorithms"]),
        replay="single-use",
        max_token_lifetime_seconds=300,
        profile=AGENT_PROFILE,
        jwks_json=json.dumps(jwks, sort_keys=True) if jwks is not None else None,
        identity_id=identity_id,
        options=IssuerOptions(allow_private_network=keys["allow_private_network"]),
    )


def _check_rule(
    issuer: TrustedIssuer,
    kind: str,
    claims: Mapping[str, str],
    where: str,
    errors: list[str],
    warnings: list[str],
) -> None:
    """A rule's claims against its issuer's profile, and the human/workload separation."""
    if kind == "human" and not issuer.human:
        errors.append(
            f"{where}.issuer: a human identity can only be matched by an issuer marked "
            f"'human: true'; {issuer.id!r} issues workload tokens"
        )
    if kind != "human" and issuer.human:
        errors.append(
            f"{where}.issuer: {issuer.id!r} is a human issuer: "
            "its tokens match human identities only"
        )
    rule_errors, rule_warnings = rule_problems(PROFILE_TABLE[issuer.profile], claims)
    errors.extend(f"{where}.{e}" for e in rule_errors)
    warnings.extend(f"{where}.{w}" for w in rule_warnings)
    if issuer.profile == "spiffe" and "spiffe_id" in claims:
        prefix = f"spiffe://{issuer.trust_domain}/"
        if not claims["spiffe_id"].startswith(prefix):
            errors.append(
                f"{where}.claims.spiffe_id: must be a SPIFFE ID in trust domain "
                f"{issuer.trust_domain!r} (start with {prefix})"
            )


def _check_inline_jwks(issuer: TrustedIssuer, where: str, errors: list[str]) -> None:
    assert issuer.jwks_json is not None
    if not parse_jwks(json.loads(issuer.jwks_json), issuer):
        errors.append(
            f"{where}: no usable public signing key (allowed algorithms: "
            f"{', '.join(issuer.algorithms)}; RSA keys need at least 2048 bits)"
        )
