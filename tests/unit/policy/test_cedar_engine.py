"""The Cedar runtime policy: loading a directory, the baseline/team tiers, forbid over
permit, approval-liftable forbids, and failing closed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.domain.models import Allowance, AudienceSpec, Identity, PolicyRequest
from broker.policy.cedar_engine import PolicyError, load_policy_dir

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "policies"
PAY = "https://payments.example.com"
AUDIENCES = {
    PAY: AudienceSpec(
        id=PAY,
        sensitivity="high",
        scope_classes={"pay:list": "discovery", "pay:read": "read", "pay:refund": "high_impact"},
        contract_version="2",
    )
}
SCOPES = {"pay:list", "pay:read", "pay:refund", "pay:write"}


def identity(ident_id: str = "agent-1", type_: str = "agent") -> Identity:
    return Identity(
        id=ident_id,
        type=type_,
        owner="team-pay",
        purpose="p",
        expires=None,
        rules=(),
        allow=Allowance((PAY,), tuple(SCOPES), (), 300),
    )


def request(scopes: tuple[str, ...], **kw: object) -> PolicyRequest:
    fields: dict[str, object] = {
        "identity": identity(),
        "issuer_id": "gha",
        "claims": {"repository": "acme/app", "run": 3, "nested": {"x": 1}},
        "audiences": (PAY,),
        "scopes": scopes,
        "scope_classes": {s: AUDIENCES[PAY].scope_classes.get(s, "") for s in scopes},
        "purpose": "refund order 42",
        "task_id": "task-1",
        "task_named": True,
        "labels": (),
        "now": 1_700_000_000.0,
    }
    fields.update(kw)
    return PolicyRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(EXAMPLE, d)
    return d


def load(d: Path):  # type: ignore[no-untyped-def]
    return load_policy_dir(d, scopes=SCOPES, audiences=AUDIENCES)


def test_the_shipped_example_loads_and_decides(policy_dir: Path) -> None:
    policy = load(policy_dir)
    read = policy.decide(request(("pay:read",)))
    assert read.allowed and read.policies == ("baseline-read",)
    # an undeclared scope has no class: nothing permits it (deny by default)
    assert policy.decide(request(("pay:write",))).deny_class == "policy_no_permit"


def test_high_impact_needs_approval_and_an_approval_lifts_only_that(policy_dir: Path) -> None:
    policy = load(policy_dir)
    pending = policy.decide(request(("pay:refund",)))
    assert not pending.allowed
    assert pending.deny_class == "approval_required"
    assert pending.policies == ("baseline-high-impact-needs-approval",)
    assert policy.decide(request(("pay:refund",), approved=True)).allowed
    # a partner is not permitted write at all: an approval would not help, so plain deny
    partner = request(("pay:refund",), identity=identity("p-1", "partner"))
    assert policy.decide(partner).deny_class == "policy_forbid"


def test_a_team_file_narrows_and_its_permits_stay_within_the_baseline(policy_dir: Path) -> None:
    (policy_dir / "team.cedar").write_text(
        '@id("team-read-own-repo")\n'
        "permit (principal, action, resource)\n"
        'when { principal.hasTag("repository") && principal.getTag("repository") == "acme/app" };\n'
        '@id("team-everything")\npermit (principal, action, resource);\n'
    )
    policy = load(policy_dir)
    assert policy.decide(request(("pay:read",))).allowed
    # the team permits everything, the baseline does not permit pay:write: still denied
    assert policy.decide(request(("pay:write",))).deny_class == "policy_no_permit"
    (policy_dir / "team.cedar").write_text(
        '@id("team-no-reads")\nforbid (principal, action, resource)\n'
        'when { context.scope_class == "read" };\n'
    )
    denied = load(policy_dir).decide(request(("pay:read",)))
    assert denied.deny_class == "policy_forbid" and denied.policies == ("team-no-reads",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permit (principal, action, resource);", "has no @id"),
        ('@id("baseline-read") permit (principal, action, resource);', "already used"),
        ('@id("x") permit (principal, action, resource) when { context.nope };', "validate"),
        ('@id("x") permit (principal, action == Action::"unknown", resource);', "validate"),
        ("permit (principal, action, resource", "not valid Cedar"),
    ],
)
def test_a_bad_file_is_refused_with_its_name(policy_dir: Path, text: str, message: str) -> None:
    (policy_dir / "team.cedar").write_text(text)
    with pytest.raises(PolicyError, match=message) as err:
        load(policy_dir)
    assert "team.cedar" in str(err.value)


def test_a_missing_baseline_or_schema_is_refused(policy_dir: Path) -> None:
    (policy_dir / "baseline.cedar").unlink()
    with pytest.raises(PolicyError, match=r"baseline\.cedar is missing"):
        load(policy_dir)


def test_an_evaluation_error_denies(policy_dir: Path) -> None:
    # An overflow is an evaluation error: Cedar would skip the forbid that errs; Errand
    # denies instead. (Schema validation catches most other errors at load time.)
    (policy_dir / "team.cedar").write_text(
        '@id("team-forbid-overflowing")\nforbid (principal, action, resource)\n'
        "when { context.now * 9223372036854775807 > 0 };\n"
        '@id("team-permit")\npermit (principal, action, resource);\n'
    )
    verdict = load(policy_dir).decide(request(("pay:read",)))
    assert verdict.deny_class == "policy_error"


def test_the_context_carries_chain_and_sender_constraint(policy_dir: Path) -> None:
    (policy_dir / "team.cedar").write_text(
        '@id("team-dpop-only")\npermit (principal, action, resource) when { context.dpop };\n'
        '@id("team-no-chain")\nforbid (principal, action, resource)\n'
        'when { context.chain.contains("agent-x") };\n'
    )
    policy = load(policy_dir)
    assert policy.decide(request(("pay:read",))).deny_class == "policy_no_permit"
    assert policy.decide(request(("pay:read",), dpop=True)).allowed
    chained = request(("pay:read",), dpop=True, chain=("agent-x",))
    assert policy.decide(chained).policies == ("team-no-chain",)
