"""Runtime policy properties (broker/policy/cedar_engine.py), on generated policy sets:
forbid always wins; a team policy never widens what the baseline alone allows (narrowing
never widens); and through the exchange, a denied request never yields a token or a grant."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.clock import FixedClock
from broker.domain.models import Allowance, AudienceSpec, Identity, PolicyRequest
from broker.policy.cedar_engine import from_texts, load_policy_dir
from broker.store import keys
from tests.support.builders import (
    UNIT_ISSUER,
    StaticFetcher,
    fake_services,
    gha_token,
    make_app,
    make_config,
    make_key_dir,
)
from tests.support.forms import exchange_form

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = (ROOT / "config" / "policies" / "schema.cedarschema").read_text()
AUD = "https://api.example"
SCOPES = ("s:list", "s:read", "s:write", "s:pay")
CLASSES = {"s:list": "discovery", "s:read": "read", "s:write": "write", "s:pay": "high_impact"}
AUDIENCES = {AUD: AudienceSpec(id=AUD, scope_classes=CLASSES)}
_ids = itertools.count()

# Conditions a generated policy may carry; all type-check against the shipped schema.
CONDITIONS = [
    "",
    'when { context.scope_class == "read" }',
    'when { context.scope_class == "write" }',
    'when { principal.type == "agent" }',
    'when { context.purpose != "" }',
    "when { context.dpop }",
    "when { context.hour_utc < 12 }",
    'when { action == Action::"s:pay" }',
    "unless { context.approved }",
]


@st.composite
def policy(draw: Any, effect: str | None = None) -> str:
    eff = effect or draw(st.sampled_from(["permit", "forbid"]))
    condition = draw(st.sampled_from(CONDITIONS))
    return f'@id("p{next(_ids)}")\n{eff} (principal, action, resource) {condition};\n'


policies = st.lists(policy(), max_size=4).map("".join)
requests = st.fixed_dictionaries(
    {
        "scopes": st.lists(st.sampled_from(SCOPES), min_size=1, max_size=2, unique=True),
        "type": st.sampled_from(["agent", "service"]),
        "purpose": st.sampled_from(["", "ship it"]),
        "dpop": st.booleans(),
        "hour": st.integers(0, 23),
        "approved": st.booleans(),
    }
)


def decide(tmp: Path, baseline: str, team: str | None, r: dict[str, Any]) -> Any:
    engine = from_texts(baseline, team, AUDIENCES)
    ident = Identity(
        id="i-1",
        type=r["type"],
        owner="o",
        purpose="p",
        expires=None,
        rules=(),
        allow=Allowance((AUD,), SCOPES, (), 300),
    )
    scopes = tuple(r["scopes"])
    return engine.decide(
        PolicyRequest(
            identity=ident,
            issuer_id="iss",
            claims={},
            audiences=(AUD,),
            scopes=scopes,
            scope_classes={s: CLASSES[s] for s in scopes},
            purpose=r["purpose"],
            task_id="t",
            task_named=True,
            labels=(),
            now=1_700_000_000 + r["hour"] * 3600 - 1_700_000_000 % 86400,
            dpop=r["dpop"],
            approved=r["approved"],
        )
    )


def test_generated_policies_validate_against_the_shipped_schema(tmp_path: Path) -> None:
    """What the properties compile unchecked is what a directory would accept."""
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    text = "".join(
        f'@id("v{i}") forbid (principal, action, resource) {c};\n' for i, c in enumerate(CONDITIONS)
    )
    (tmp_path / "baseline.cedar").write_text(text)
    assert load_policy_dir(tmp_path, scopes=SCOPES, audiences=AUDIENCES).count == len(CONDITIONS)


FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(baseline=policies, team=policies, r=requests)
def test_a_team_file_never_widens_the_baseline(tmp_path: Path, baseline, team, r) -> None:
    alone = decide(tmp_path, baseline, None, r)
    with_team = decide(tmp_path, baseline, team, r)
    if with_team.allowed:
        assert alone.allowed


@FAST
@given(baseline=policies, team=policies, extra=policy(effect="forbid"), r=requests)
def test_adding_a_forbid_never_widens(tmp_path: Path, baseline, team, extra, r) -> None:
    before = decide(tmp_path, baseline, team, r)
    after_team = decide(tmp_path, baseline, team + extra, r)
    after_base = decide(tmp_path, baseline + extra, team, r)
    if after_team.allowed or after_base.allowed:
        assert before.allowed


@FAST
@given(baseline=policies, team=st.one_of(st.none(), policies), r=requests)
def test_forbid_always_wins(tmp_path: Path, baseline, team, r) -> None:
    # An unconditional forbid anywhere denies, whatever else permits.
    catch_all = f'@id("p{next(_ids)}")\nforbid (principal, action, resource);\n'
    verdict = decide(tmp_path, baseline + catch_all, team, r)
    assert not verdict.allowed and verdict.deny_class == "policy_forbid"
    if team is not None:
        verdict = decide(tmp_path, baseline, team + catch_all, r)
        assert not verdict.allowed


# -- through the exchange ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_app(tmp_path_factory: pytest.TempPathFactory, issuer_key: Any) -> dict[str, Any]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["identities"][0]["allow"]["audiences"].append(AUD)
        raw["identities"][0]["allow"]["scopes"] += list(SCOPES)
        raw["audiences"] = [
            {
                "id": AUD,
                "scopes": {
                    c: [s for s, k in CLASSES.items() if k == c] for c in set(CLASSES.values())
                },
            }
        ]

    tmp = tmp_path_factory.mktemp("policy-prop")
    clock = FixedClock(1_800_000_000.0)
    fetcher = StaticFetcher({"keys": [issuer_key.public_jwk()]})
    svc = fake_services(
        make_config(UNIT_ISSUER, mutate), make_key_dir(tmp), clock=clock, fetcher=fetcher
    )
    return {
        "svc": svc,
        "client": make_app(svc, tmp).test_client(),
        "clock": clock,
        "key": issuer_key,
    }


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    baseline=policies,
    team=st.one_of(st.none(), policies),
    scopes=st.lists(st.sampled_from(SCOPES[1:]), min_size=1, max_size=2, unique=True),
)
def test_a_denied_request_never_yields_a_token(policy_app, baseline, team, scopes) -> None:
    svc, client = policy_app["svc"], policy_app["client"]
    policy = from_texts(baseline, team, AUDIENCES)
    svc.config = replace(svc.config, runtime_policy=policy)
    before = set(svc.redis.keys(keys.PREFIX + "*:grant:*"))
    token = gha_token(policy_app["key"], UNIT_ISSUER, now=policy_app["clock"].now())
    resp = client.post(
        "/token",
        data=exchange_form(
            token, audience=AUD, scope=" ".join(scopes), task_id=f"t{next(_ids)}", purpose="p"
        ),
    )
    after = set(svc.redis.keys(keys.PREFIX + "*:grant:*"))
    if resp.status_code != 200:
        assert after == before and "access_token" not in resp.get_json()
    else:
        assert len(after - before) == 1
    # the engine's own verdict agrees with the HTTP answer
    r = {
        "scopes": scopes,
        "type": "service",
        "purpose": "p",
        "dpop": False,
        "hour": int(policy_app["clock"].now()) // 3600 % 24,
        "approved": False,
    }
    assert (resp.status_code == 200) == decide(Path("."), baseline, team, r).allowed
