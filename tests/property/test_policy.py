"""The matcher and the policy engine never grant more than the rule says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from broker.domain.models import (
    TOKEN_TYPE_JWT,
    Allowance,
    BrokerOptions,
    Config,
    ExchangeRequest,
    Identity,
    MatchRule,
)
from broker.errors import BrokerError
from broker.policy.engine import evaluate
from broker.policy.matcher import IdentityMatcher, Match, Miss, claim_text

SETTINGS = settings(max_examples=200)
BROKER = BrokerOptions(issuer="https://errand.test")

claim_names = st.text(min_size=1, max_size=12)
# Exact rule values (a '*' would make a pattern, which has its own semantics).
exact_values = st.one_of(
    st.text(min_size=1, max_size=20).filter(lambda s: "*" not in s),
    st.integers(min_value=0, max_value=10**12).map(str),
)
any_claim = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def one_rule_config(claims: dict[str, str]) -> Config:
    rule = MatchRule(id="ident#0", issuer_id="gha", claims=tuple(sorted(claims.items())))
    identity = Identity(
        id="ident",
        type="service",
        owner="team",
        purpose="p",
        expires=None,
        rules=(rule,),
        allow=Allowance(
            audiences=("https://a",), scopes=("s",), default_scopes=("s",), max_ttl_seconds=600
        ),
    )
    return Config(broker=BROKER, issuers={}, identities=(identity,), clients={})


@pytest.mark.slow  # hundreds of generated examples: over a second
@SETTINGS
@given(
    rule=st.dictionaries(claim_names, exact_values, min_size=1, max_size=5),
    extra=st.dictionaries(claim_names, any_claim, max_size=4),
    data=st.data(),
)
def test_matcher_never_matches_when_a_rule_claim_differs(
    rule: dict[str, str], extra: dict[str, Any], data: Any
) -> None:
    matcher = IdentityMatcher(one_rule_config(rule))
    token = {**extra, **rule}
    assert isinstance(matcher.match("gha", token), Match)  # all equal: it matches

    name = data.draw(st.sampled_from(sorted(rule)))
    replacement = data.draw(any_claim)
    assume(claim_text(replacement) != rule[name])
    changed = dict(token)
    if replacement is None and data.draw(st.booleans()):
        del changed[name]
    else:
        changed[name] = replacement
    found = matcher.match("gha", changed)
    assert isinstance(found, Miss)
    assert name in found.claims
    # The miss lists only claims that really differ.
    assert all(claim_text(changed.get(n)) != rule[n] for n in found.claims)
    # And another issuer never matches, whatever the claims.
    assert isinstance(matcher.match("other", token), Miss)


scope_tokens = st.sampled_from(["read", "write", "admin", "deploy:read", "deploy:write", "x"])
audiences = st.sampled_from(["https://a", "https://b", "https://c", "https://evil"])


@SETTINGS
@given(
    allowed_scopes=st.lists(scope_tokens, min_size=1, max_size=4, unique=True),
    allowed_auds=st.lists(audiences, min_size=1, max_size=3, unique=True),
    data=st.data(),
    requested_scopes=st.one_of(st.none(), st.lists(scope_tokens, min_size=1, max_size=5)),
    requested_auds=st.lists(audiences, max_size=4),
    lifetime=st.one_of(st.none(), st.integers(min_value=1, max_value=999_999)),
    max_ttl=st.integers(min_value=1, max_value=86_400),
)
def test_evaluate_never_exceeds_the_allowance(
    allowed_scopes, allowed_auds, data, requested_scopes, requested_auds, lifetime, max_ttl
) -> None:
    defaults = data.draw(
        st.lists(st.sampled_from(allowed_scopes), unique=True, max_size=len(allowed_scopes))
    )
    allow = Allowance(
        audiences=tuple(allowed_auds),
        scopes=tuple(allowed_scopes),
        default_scopes=tuple(defaults),
        max_ttl_seconds=max_ttl,
    )
    identity = Identity(
        id="ident", type="service", owner="team", purpose="p", expires=None, rules=(), allow=allow
    )
    req = ExchangeRequest(
        subject_token="t",
        subject_token_type=TOKEN_TYPE_JWT,
        audiences=tuple(requested_auds),
        scopes=tuple(requested_scopes) if requested_scopes is not None else None,
        requested_lifetime=lifetime,
    )
    try:
        decision = evaluate(identity, req, BROKER)
    except BrokerError as err:
        assert err.error in ("invalid_scope", "invalid_target", "invalid_request")
        return
    assert set(decision.scopes) <= set(allowed_scopes)
    assert set(decision.audiences) <= set(allowed_auds)
    assert decision.audiences
    # Nothing silently narrowed: what was asked is what is given.
    if requested_scopes is not None:
        assert set(decision.scopes) == set(requested_scopes)
    else:
        assert decision.scopes == tuple(defaults)
    if requested_auds:
        assert set(decision.audiences) == set(requested_auds)
    assert 1 <= decision.ttl_seconds <= min(max_ttl, BROKER.max_token_ttl_seconds)
    if lifetime is not None:
        assert decision.ttl_seconds <= lifetime
