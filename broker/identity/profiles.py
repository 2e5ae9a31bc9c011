"""Issuer profiles: how each workload platform's tokens are read and what rules may name.

A profile decides, per issuer:

- which claim names a trust rule may use (the platform's own names; checked at config load,
  so a typo such as `repo_id` fails `errand config check` instead of never matching);
- which of those carry immutable ids (exact values only, never patterns) and which anchor a
  rule to one tenant (a GitHub rule must bind an owner or repository, or it would match any
  repository on github.com that asks for our audience);
- how the verified claims become the attributes rules are matched against (Kubernetes:
  namespace and service account read from `kubernetes.io` and cross-checked with `sub`;
  SPIFFE: the SPIFFE ID in `sub`, which must lie in the issuer's trust domain);
- the default replay policy and the non-secret context recorded in the audit event.

`sub` is never parsed for GitHub or GitLab: its format changes (GitHub's July 2026 form
`repo:acme@123456/app@789012:ref:...` next to `repo:acme/app:ref:...`), and the same facts are
signed as separate claims."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.domain.models import AGENT_PROFILE, TrustedIssuer
from broker.identity.errors import ClaimInvalid

MAX_CONTEXT_CHARS = 256

Reader = Callable[
    [Mapping[str, Any], TrustedIssuer], tuple[Mapping[str, Any] | None, dict[str, Any]]
]


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value[:MAX_CONTEXT_CHARS]
    if isinstance(value, int):
        return str(value)
    return None


def _pick(claims: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = _text(claims.get(name))
        if value is not None:
            out[name] = value
    return out


# -- GitHub Actions ------------------------------------------------------------------------
# https://docs.github.com/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect
GITHUB_RULE_CLAIMS = frozenset(
    {
        "repository",
        "repository_id",
        "repository_owner",
        "repository_owner_id",
        "repository_visibility",
        "ref",
        "ref_type",
        "ref_protected",
        "environment",
        "environment_node_id",
        "workflow",
        "workflow_ref",
        "workflow_sha",
        "job_workflow_ref",
        "job_workflow_sha",
        "event_name",
        "head_ref",
        "base_ref",
        "actor",
        "actor_id",
        "runner_environment",
        "sha",
        "enterprise",
        "enterprise_id",
    }
)
GITHUB_CONTEXT = (
    "repository",
    "repository_id",
    "repository_owner_id",
    "ref",
    "event_name",
    "environment",
    "workflow_ref",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "actor",
    "sha",
    "runner_environment",
)

# -- GitLab CI -----------------------------------------------------------------------------
# https://docs.gitlab.com/ci/secrets/id_token_authentication/
GITLAB_RULE_CLAIMS = frozenset(
    {
        "project_path",
        "project_id",
        "namespace_path",
        "namespace_id",
        "ref",
        "ref_type",
        "ref_path",
        "ref_protected",
        "environment",
        "environment_protected",
        "deployment_tier",
        "environment_action",
        "pipeline_source",
        "user_id",
        "user_login",
        "user_email",
        "user_access_level",
        "runner_id",
        "runner_environment",
        "sha",
        "ci_config_ref_uri",
        "ci_config_sha",
        "project_visibility",
    }
)
GITLAB_CONTEXT = (
    "project_path",
    "project_id",
    "namespace_path",
    "ref",
    "ref_protected",
    "environment",
    "pipeline_source",
    "pipeline_id",
    "job_id",
    "user_login",
    "sha",
    "runner_environment",
)


def _read_claims_as_is(
    claims: Mapping[str, Any], issuer: TrustedIssuer, context: tuple[str, ...]
) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
    return None, {"workload": _pick(claims, context)} if context else {}


# -- Kubernetes ----------------------------------------------------------------------------
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_K8S_SUB = "system:serviceaccount:{namespace}:{name}"


def _small_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ClaimInvalid(
            f"the token's '{where}' claim is missing or not an object", reason="missing_claim"
        )
    return value


def _k8s_ref(obj: Mapping[str, Any], name: str) -> dict[str, str] | None:
    value = obj.get(name)
    if not isinstance(value, Mapping):
        return None
    return {k: v[:MAX_CONTEXT_CHARS] for k in ("name", "uid") if isinstance(v := value.get(k), str)}


def _read_kubernetes(
    claims: Mapping[str, Any], issuer: TrustedIssuer
) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
    """Projected service-account token (TokenRequest API). Namespace and service account come
    from the `kubernetes.io` claim; `sub` must say the same, or the token is refused."""
    k8s = _small_object(claims.get("kubernetes.io"), "kubernetes.io")
    namespace = k8s.get("namespace")
    account = _small_object(k8s.get("serviceaccount"), "kubernetes.io.serviceaccount")
    name = account.get("name")
    if not isinstance(namespace, str) or not _K8S_NAME.fullmatch(namespace):
        raise ClaimInvalid("the token's 'kubernetes.io.namespace' claim is malformed")
    if not isinstance(name, str) or not _K8S_NAME.fullmatch(name):
        raise ClaimInvalid("the token's 'kubernetes.io.serviceaccount.name' claim is malformed")
    if claims.get("sub") != _K8S_SUB.format(namespace=namespace, name=name):
        raise ClaimInvalid(
            "the token's 'sub' does not agree with its 'kubernetes.io' claim",
            reason="subject_mismatch",
        )
    attributes: dict[str, Any] = {"namespace": namespace, "service_account": name}
    uid = account.get("uid")
    if isinstance(uid, str):
        attributes["service_account_uid"] = uid[:MAX_CONTEXT_CHARS]
    binding: dict[str, Any] = {"namespace": namespace, "service_account": name}
    for ref in ("pod", "node", "secret"):
        found = _k8s_ref(k8s, ref)
        if found:
            binding[ref] = found
    return attributes, {"workload": {"kubernetes": binding}}


# -- SPIFFE --------------------------------------------------------------------------------
# https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md
_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)+)")
MAX_SPIFFE_ID_CHARS = 2048


def parse_spiffe_id(value: Any) -> tuple[str, str] | None:
    """(trust domain, path) of a workload SPIFFE ID, or None if `value` is not one."""
    if not isinstance(value, str) or len(value) > MAX_SPIFFE_ID_CHARS:
        return None
    m = _SPIFFE_ID.fullmatch(value)
    if m is None:
        return None
    if any(seg in (".", "..") for seg in m.group(2).split("/")[1:]):
        return None
    return m.group(1), m.group(2)


def _read_spiffe(
    claims: Mapping[str, Any], issuer: TrustedIssuer
) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
    """JWT-SVID: `sub` must be a SPIFFE ID in the issuer's trust domain (SPIFFE JWT-SVID §3)."""
    parsed = parse_spiffe_id(claims.get("sub"))
    if parsed is None:
        raise ClaimInvalid("the token's 'sub' is not a SPIFFE ID", reason="malformed_spiffe_id")
    trust_domain, _path = parsed
    if trust_domain != issuer.trust_domain:
        raise ClaimInvalid(
            "the token's SPIFFE ID is not in the trust domain of its bundle",
            reason="wrong_trust_domain",
            debug=f"trust_domain={trust_domain[:100]}",
        )
    spiffe_id = str(claims["sub"])
    return {"spiffe_id": spiffe_id}, {"workload": {"spiffe_id": spiffe_id[:MAX_CONTEXT_CHARS]}}


# -- Agents' own keys ----------------------------------------------------------------------
def _read_agent(
    claims: Mapping[str, Any], issuer: TrustedIssuer
) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
    """RFC 7523 §3 style assertion: iss = sub = the identity, aud = our token endpoint only."""
    if claims.get("sub") != issuer.identity_id or claims.get("iss") != issuer.identity_id:
        raise ClaimInvalid("the assertion's 'sub' must equal its 'iss'", reason="subject_mismatch")
    aud = claims.get("aud")
    # strict audience: we must be the only audience, or the assertion could be replayed at a peer
    if not (aud == issuer.audience or aud == [issuer.audience]):
        raise ClaimInvalid(
            "the assertion's 'aud' must be this broker's token endpoint only",
            reason="wrong_audience",
        )
    return {"sub": issuer.identity_id}, {"workload": {"agent": issuer.identity_id}}


@dataclass(frozen=True)
class Profile:
    name: str
    rule_claims: frozenset[str] | None  # None: any claim name
    id_claims: frozenset[str] = frozenset()  # immutable ids: exact values only
    anchor_claims: frozenset[str] = frozenset()  # a rule must bind one of these, literally
    strong_anchors: frozenset[str] = frozenset()  # without one, warn (names can be recycled)
    default_replay: str = "single-use"
    human_allowed: bool = False
    read: Reader = field(default=lambda claims, issuer: (None, {}), compare=False, repr=False)
    hints: Mapping[str, str] = field(default_factory=dict)  # refused claim -> why


_SUB_HINT = (
    "rules never use 'sub': its format changes (GitHub added immutable ids in July 2026); "
    "bind the signed claims instead"
)

PROFILES: Mapping[str, Profile] = {
    "generic": Profile(name="generic", rule_claims=None, human_allowed=True),
    "github-actions": Profile(
        name="github-actions",
        rule_claims=GITHUB_RULE_CLAIMS,
        id_claims=frozenset({"repository_id", "repository_owner_id", "actor_id", "enterprise_id"}),
        anchor_claims=frozenset(
            {
                "repository_id",
                "repository_owner_id",
                "repository",
                "repository_owner",
                "job_workflow_ref",
                "workflow_ref",
                "enterprise_id",
                "enterprise",
            }
        ),
        strong_anchors=frozenset({"repository_id", "repository_owner_id", "enterprise_id"}),
        read=lambda claims, issuer: _read_claims_as_is(claims, issuer, GITHUB_CONTEXT),
        hints={"sub": _SUB_HINT + " (repository_id, repository_owner_id, ref, ...)"},
    ),
    "gitlab-ci": Profile(
        name="gitlab-ci",
        rule_claims=GITLAB_RULE_CLAIMS,
        id_claims=frozenset({"project_id", "namespace_id", "user_id", "runner_id"}),
        anchor_claims=frozenset(
            {"project_id", "namespace_id", "project_path", "namespace_path", "ci_config_ref_uri"}
        ),
        strong_anchors=frozenset({"project_id", "namespace_id"}),
        read=lambda claims, issuer: _read_claims_as_is(claims, issuer, GITLAB_CONTEXT),
        hints={"sub": _SUB_HINT + " (project_id, namespace_id, ref, ...)"},
    ),
    "kubernetes": Profile(
        name="kubernetes",
        rule_claims=frozenset({"namespace", "service_account", "service_account_uid"}),
        id_claims=frozenset({"service_account_uid"}),
        anchor_claims=frozenset({"namespace"}),
        # Projected tokens carry a jti only since Kubernetes 1.29, and the kubelet hands the
        # same token to the pod until it rotates it (at 80% of its lifetime): a workload that
        # exchanges twice would be refused under single-use. See docs/identities.md.
        default_replay="reuse-within-lifetime",
        read=_read_kubernetes,
        hints={"sub": "rules use 'namespace' and 'service_account', read from 'kubernetes.io'"},
    ),
    "spiffe": Profile(
        name="spiffe",
        rule_claims=frozenset({"spiffe_id"}),
        anchor_claims=frozenset({"spiffe_id"}),
        # JWT-SVIDs carry no jti by default and SPIRE agents re-serve a cached SVID.
        default_replay="reuse-within-lifetime",
        read=_read_spiffe,
        hints={"sub": "rules use 'spiffe_id' (exact or a path pattern such as spiffe://td/ns/*)"},
    ),
    AGENT_PROFILE: Profile(name=AGENT_PROFILE, rule_claims=frozenset({"sub"}), read=_read_agent),
}

# Registered JWT claims: never a rule's business (they are checked by the verifier).
REGISTERED_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})


def profile_for(issuer: TrustedIssuer) -> Profile:
    return PROFILES[issuer.profile]


def rule_problems(profile: Profile, claims: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for one rule's claim names and values under `profile`."""
    from broker.policy.patterns import PatternError, compile_value

    errors: list[str] = []
    warnings: list[str] = []
    for name, value in claims.items():
        if name in REGISTERED_CLAIMS:
            errors.append(
                f"claims.{name}: a registered JWT claim is checked by the verifier, not by rules"
            )
            continue
        if profile.rule_claims is not None and name not in profile.rule_claims:
            hint = profile.hints.get(name)
            errors.append(
                f"claims.{name}: "
                + (
                    hint
                    or f"not a claim the {profile.name} profile matches; "
                    f"use one of {', '.join(sorted(profile.rule_claims))}"
                )
            )
            continue
        try:
            pattern = compile_value(value)
        except PatternError as err:
            errors.append(f"claims.{name}: {err}")
            continue
        if name in profile.id_claims and not pattern.is_exact:
            errors.append(f"claims.{name}: an immutable id is matched exactly, never by pattern")
    if profile.anchor_claims and not errors:
        anchored = [
            n
            for n in profile.anchor_claims
            if n in claims and compile_value(claims[n]).anchored_first_segment
        ]
        if not anchored:
            errors.append(
                f"claims: a {profile.name} rule must bind one of "
                f"{', '.join(sorted(profile.anchor_claims))} with a literal owner part; "
                "otherwise any tenant's token for our audience could match"
            )
        elif profile.strong_anchors and not profile.strong_anchors & claims.keys():
            warnings.append(
                f"claims: binds names only ({', '.join(sorted(anchored))}); a deleted and "
                "re-created name would match: also bind "
                + " or ".join(sorted(profile.strong_anchors))
            )
    return errors, warnings
