"""A DPoP proof spent at one broker node is refused at another: two Services (two nodes'
stores) on one real Redis, the spent proof's key expiring with the proof window."""

from __future__ import annotations

import time

import pytest

from broker.domain.dpop import check_dpop_header, token_endpoint
from broker.errors import InvalidDpopProof
from broker.store import keys
from tests.support.domain import exchange
from tests.support.dpop import DpopKey

pytestmark = pytest.mark.integration


def test_a_proof_used_at_one_node_is_refused_at_another(make_svc, subject, raw) -> None:
    node_a, node_b = make_svc(), make_svc()
    key = DpopKey.generate()
    proof = key.proof("POST", token_endpoint(node_a.config))
    binding = check_dpop_header([proof], node_a.config, time.time())
    assert binding is not None and binding.jkt == key.jkt

    issued = exchange(node_a, subject(), dpop=binding)
    assert issued.grant.dpop_jkt == key.jkt
    assert raw.hget(keys.grant(issued.grant.jti), "k") == key.jkt

    with pytest.raises(InvalidDpopProof):
        exchange(node_b, subject(), dpop=check_dpop_header([proof], node_b.config, time.time()))
    spent = list(raw.scan_iter("errand:dpop:*"))
    assert len(spent) == 1 and spent[0].startswith(f"errand:dpop:{key.jkt}:")
    # Kept exactly as long as the proof's iat is accepted (60 s window + 5 s leeway + 1).
    assert 0 < raw.ttl(spent[0]) <= 66

    # A fresh proof from the same key is fine at either node.
    fresh = key.proof("POST", token_endpoint(node_b.config))
    again = exchange(node_b, subject(), dpop=check_dpop_header([fresh], node_b.config, time.time()))
    assert again.grant.dpop_jkt == key.jkt


def test_a_refused_exchange_spends_no_proof(make_svc, subject, raw) -> None:
    svc = make_svc()
    key = DpopKey.generate()
    binding = check_dpop_header(
        [key.proof("POST", token_endpoint(svc.config))], svc.config, time.time()
    )
    with pytest.raises(Exception, match="scope"):
        exchange(svc, subject(), dpop=binding, scopes=("admin:everything",))
    assert not list(raw.scan_iter("errand:dpop:*"))
    assert exchange(svc, subject(), dpop=binding).grant.dpop_jkt == key.jkt
