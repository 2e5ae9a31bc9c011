"""A subject token means exactly what it says, or it is refused.

- Delegation claims (`act`, nested `act`, `may_act`, RFC 8693 §4.1 and §4.4): a token that
  says someone acts, or may act, for its subject is not a plain subject token. Until Errand
  has a delegation path, such tokens are refused: invalid_request for token exchange
  (RFC 8693 §2.2.2), invalid_grant for jwt-bearer (RFC 7523 §3.1), audited with the reason
  `delegation_unsupported`. An `actor_token` parameter is refused the same way.
- Audience: by default the token must be addressed to Errand alone (`aud` our audience, or
  an array of exactly that one element). An issuer may opt in to multiple audiences
  (`allow_multiple_audiences: true`). Whenever `azp` is present it must be Errand's audience
  or the issuer's `expected_azp`: a token obtained by another party is not ours to accept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.domain.models import GRANT_TYPE_JWT_BEARER
from broker.identity.errors import ClaimInvalid
from tests.support.builders import (
    AUDIENCE,
    DEPLOY_AUD,
    UNIT_ISSUER,
    fake_services,
    gha_token,
    make_app,
    make_config,
)
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error
from tests.support.redis import grant_state_keys, stream_events

GRANTS = ("token-exchange", "jwt-bearer")
ERROR = {"token-exchange": "invalid_request", "jwt-bearer": "invalid_grant"}
OTHER_PARTY = "https://other-relying-party.example"
EXPECTED_CLIENT = "ci-client-7"


def form_for(grant: str, token: str, **extra: Any) -> dict[str, Any]:
    if grant == "token-exchange":
        return deploy_form(token, **extra)
    form = {
        "grant_type": GRANT_TYPE_JWT_BEARER,
        "assertion": token,
        "audience": DEPLOY_AUD,
        "scope": "deploy:write",
    }
    form.update(extra)
    return form


class Broker:
    """An app on fakeredis whose one issuer takes the given extra configuration keys."""

    def __init__(self, svc: Any, client: Any, issuer_key: Any, clock: Any) -> None:
        self.svc, self.client, self.key, self.clock = svc, client, issuer_key, clock

    def token(self, **claims: Any) -> str:
        return gha_token(self.key, UNIT_ISSUER, now=self.clock.now(), **claims)

    def post(self, grant: str, token: str, **extra: Any) -> Any:
        return self.client.post("/token", data=form_for(grant, token, **extra))

    def refused(self, grant: str, token: str, reason: str, **extra: Any) -> dict[str, Any]:
        before = grant_state_keys(self.svc)
        resp = self.post(grant, token, **extra)
        body = assert_oauth_error(resp, 400, ERROR[grant])
        assert "access_token" not in body
        assert grant_state_keys(self.svc) == before  # no token, no state
        event = stream_events(self.svc)[-1]
        assert event["outcome"] == "denied"
        assert event["reason"] == reason, event
        return body

    def accepted(self, grant: str, token: str) -> None:
        resp = self.post(grant, token)
        assert resp.status_code == 200, resp.get_json()


@pytest.fixture
def make_broker(
    issuer_key: Any, key_dir: Path, clock: Any, fetcher: Any, tmp_path: Path
) -> Callable[..., Broker]:
    def build(**issuer_keys: Any) -> Broker:
        config = make_config(UNIT_ISSUER, lambda raw: raw["issuers"][0].update(issuer_keys))
        svc = fake_services(config, key_dir, clock=clock, fetcher=fetcher)
        return Broker(svc, make_app(svc, tmp_path).test_client(), issuer_key, clock)

    return build


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker()


# -- delegation claims ----------------------------------------------------------------------------

DELEGATION_SHAPES: dict[str, dict[str, Any]] = {
    "act": {"act": {"sub": "repo:mallory/tools:ref:refs/heads/main"}},
    "nested_act": {"act": {"sub": "agent-a", "act": {"sub": "agent-b"}}},
    "act_naming_the_subject_itself": {"act": {"sub": "repo:acme/app:ref:refs/heads/main"}},
    "act_empty": {"act": {}},
    "act_not_an_object": {"act": "agent-a"},
    "may_act_naming_someone_else": {"may_act": {"sub": "agent-elsewhere"}},
}


@pytest.mark.regression
@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize("shape", sorted(DELEGATION_SHAPES))
def test_review_subject_token_with_delegation_claims_is_refused(
    broker: Broker, grant: str, shape: str
) -> None:
    body = broker.refused(grant, broker.token(**DELEGATION_SHAPES[shape]), "delegation_unsupported")
    assert "delegation" in body["error_description"]


@pytest.mark.regression
def test_review_delegation_refusal_comes_from_the_verifier(broker: Broker) -> None:
    """Every caller of the verifier (both grants, and any later one) gets the refusal."""
    token = broker.token(act={"sub": "agent-a"})
    with pytest.raises(ClaimInvalid) as info:
        broker.svc.verifier.verify(token, now=broker.clock.now())
    assert info.value.reason == "delegation_unsupported"


@pytest.mark.parametrize(
    "extra",
    [
        {"actor_token": "x.y.z"},
        {"actor_token": ""},
        {"actor_token_type": "urn:ietf:params:oauth:token-type:jwt"},
    ],
    ids=["actor-token", "empty-actor-token", "actor-token-type-alone"],
)
@pytest.mark.parametrize("grant", GRANTS)
def test_review_actor_token_parameter_is_refused(
    broker: Broker, grant: str, extra: dict[str, Any]
) -> None:
    before = grant_state_keys(broker.svc)
    resp = broker.post(grant, broker.token(), **extra)
    assert_oauth_error(resp, 400, "invalid_request")
    assert grant_state_keys(broker.svc) == before
    assert stream_events(broker.svc)[-1]["outcome"] == "denied"


# -- audience -------------------------------------------------------------------------------------


@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize("aud", [AUDIENCE, [AUDIENCE]], ids=["string", "array-of-one"])
def test_review_token_addressed_to_errand_alone_is_accepted(
    broker: Broker, grant: str, aud: Any
) -> None:
    broker.accepted(grant, broker.token(aud=aud))


@pytest.mark.regression
@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize(
    "aud",
    [[AUDIENCE, OTHER_PARTY], [OTHER_PARTY, AUDIENCE], [AUDIENCE, AUDIENCE]],
    ids=["ours-first", "ours-last", "ours-twice"],
)
def test_review_token_also_addressed_to_other_parties_is_refused_by_default(
    broker: Broker, grant: str, aud: list[str]
) -> None:
    body = broker.refused(grant, broker.token(aud=aud), "multiple_audiences")
    assert "'aud'" in body["error_description"]
    assert OTHER_PARTY not in body["error_description"]  # never the values compared


@pytest.mark.parametrize("grant", GRANTS)
def test_review_issuer_may_opt_in_to_multiple_audiences(
    make_broker: Callable[..., Broker], grant: str
) -> None:
    broker = make_broker(allow_multiple_audiences=True)
    broker.accepted(grant, broker.token(aud=[OTHER_PARTY, AUDIENCE]))
    # Still one of them must be ours.
    broker.refused(grant, broker.token(aud=[OTHER_PARTY, "elsewhere"]), "wrong_audience")


# -- azp ------------------------------------------------------------------------------------------


@pytest.mark.regression
@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize("multiple", [False, True], ids=["single-audience", "multiple-audiences"])
def test_review_azp_naming_another_party_is_refused(
    make_broker: Callable[..., Broker], grant: str, multiple: bool
) -> None:
    broker = make_broker(allow_multiple_audiences=multiple, expected_azp=EXPECTED_CLIENT)
    aud: Any = [AUDIENCE, OTHER_PARTY] if multiple else AUDIENCE
    body = broker.refused(grant, broker.token(aud=aud, azp=OTHER_PARTY), "wrong_azp")
    assert "'azp'" in body["error_description"]
    assert OTHER_PARTY not in body["error_description"]


@pytest.mark.regression
@pytest.mark.parametrize("grant", GRANTS)
def test_review_azp_without_an_expected_client_must_be_errand(broker: Broker, grant: str) -> None:
    broker.refused(grant, broker.token(azp=EXPECTED_CLIENT), "wrong_azp")
    broker.refused(grant, broker.token(azp=[AUDIENCE]), "wrong_azp")  # not even a string
    broker.refused(grant, broker.token(azp=None), "wrong_azp")  # null is not "absent"
    broker.accepted(grant, broker.token(azp=AUDIENCE))


@pytest.mark.parametrize("grant", GRANTS)
@pytest.mark.parametrize("azp", [AUDIENCE, EXPECTED_CLIENT])
def test_review_azp_naming_errand_or_the_expected_client_is_accepted(
    make_broker: Callable[..., Broker], grant: str, azp: str
) -> None:
    broker = make_broker(allow_multiple_audiences=True, expected_azp=EXPECTED_CLIENT)
    broker.accepted(grant, broker.token(aud=[AUDIENCE, OTHER_PARTY], azp=azp))
