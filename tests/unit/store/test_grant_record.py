"""A grant's Redis record: fields that say nothing new are left out, and every record,
old (every field written) or new, reads back as the grant that was written."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.models import Grant
from broker.store.grant_record import grant_fields, grant_from

BASE = Grant(
    jti="j" * 22,
    identity_id="acme-app-deploy",
    identity_type="ci",
    owner="acme-platform",
    task_id="t" * 22,
    audiences=("https://deploy.acme.example",),
    scopes=("deploy:write",),
    client_id="acme-app-deploy",
    exp=2_000_000_600,
    iat=2_000_000_000,
    issuer_id="github",
    epoch=3,
    purpose="",
)


def record(grant: Grant) -> dict[str, str]:
    flat = grant_fields(grant)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_the_usual_grant_leaves_out_client_and_purpose() -> None:
    h = record(BASE)
    assert "c" not in h and "r" not in h
    assert h["a"] == "https://deploy.acme.example"
    assert grant_fields(BASE)[:2] == ["i", "acme-app-deploy"]  # save_grant.lua reads ARGV[12]
    assert grant_from(BASE.jti, h) == BASE


def test_a_record_written_with_every_field_still_reads() -> None:
    old = {
        "i": "acme-app-deploy", "y": "ci", "o": "acme-platform", "t": "t" * 22,
        "a": json.dumps(["https://deploy.acme.example"]), "s": "deploy:write",
        "c": "acme-app-deploy", "e": "2000000600", "n": "2000000000", "u": "github",
        "p": "3", "r": "",
    }  # fmt: skip
    assert grant_from(BASE.jti, old) == BASE


audience = st.one_of(
    st.sampled_from(["[", '["x"]', "[]", "https://a.example", "a b", ""]),
    st.text(min_size=1, max_size=12),
)


@settings(max_examples=100, deadline=None)
@given(
    audiences=st.lists(audience, min_size=0, max_size=3).map(tuple),
    client=st.sampled_from(["acme-app-deploy", "other-client"]),
    purpose=st.sampled_from(["", "deploy", "[x]"]),
)
def test_any_grant_reads_back(audiences: tuple[str, ...], client: str, purpose: str) -> None:
    grant = dataclasses.replace(BASE, audiences=audiences, client_id=client, purpose=purpose)
    assert grant_from(grant.jti, record(grant)) == grant
