"""AgentKey: RFC 7523-style assertions signed with an agent's own ES256 key."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from errand_client import AgentKey, ErrandClient

ENDPOINT = "https://errand.example/token"


def pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_assertion_claims_and_header(ec_key) -> None:
    agent = AgentKey(
        "agent-summariser", pem(ec_key), "kid-1", ENDPOINT, clock=lambda: 1_800_000_000
    )
    first, second = agent(), agent()
    header = jwt.get_unverified_header(first)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": "kid-1"}
    claims = jwt.decode(
        first,
        ec_key.public_key(),
        algorithms=["ES256"],
        audience=ENDPOINT,
        options={
            "require": ["iss", "sub", "aud", "exp", "iat", "jti"],
            "verify_exp": False,
            "verify_iat": False,
        },
    )
    assert claims["iss"] == claims["sub"] == "agent-summariser"
    assert claims["aud"] == ENDPOINT
    assert claims["iat"] == 1_800_000_000 and 0 < claims["exp"] - claims["iat"] <= 300
    other = jwt.decode(
        second,
        ec_key.public_key(),
        algorithms=["ES256"],
        audience=ENDPOINT,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert other["jti"] != claims["jti"]  # single use: a new jti per call


def test_lifetime_is_bounded(ec_key) -> None:
    with pytest.raises(ValueError):
        AgentKey("a", pem(ec_key), "k", ENDPOINT, lifetime_seconds=301)


def test_only_p256_keys(ec_key) -> None:
    with pytest.raises(ValueError, match="P-256"):
        AgentKey(
            "a", pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "k", ENDPOINT
        )
    with pytest.raises(ValueError, match="P-256"):
        AgentKey("a", pem(ec.generate_private_key(ec.SECP384R1())), "k", ENDPOINT)
    with pytest.raises(ValueError) as info:
        AgentKey(
            "a",
            # Not key material: a PEM frame around junk (split so no scanner mistakes it).
            b"-----BEGIN " + b"PRIVATE KEY-----\nnot a key\n-----END " + b"PRIVATE KEY-----\n",
            "k",
            ENDPOINT,
        )
    assert "not a key" not in str(info.value)


def test_repr_hides_the_key(ec_key) -> None:
    agent = AgentKey("agent-a", pem(ec_key).decode(), "kid-1", ENDPOINT)
    assert "PRIVATE" not in repr(agent) and "agent-a" in repr(agent)


def test_agent_key_as_subject_token_provider(broker, sleeps, ec_key) -> None:
    agent = AgentKey("agent-a", pem(ec_key), "kid-1", broker.url + "/token")
    broker.token_script = [broker.unavailable("0")]
    client = ErrandClient(broker.url, agent, sleep=sleeps)
    client.exchange(audience="https://tickets.example", scopes=["tickets:read"])
    subjects = broker.subject_tokens()
    assert len(subjects) == 2
    jtis = {
        jwt.decode(s, ec_key.public_key(), algorithms=["ES256"], audience=broker.url + "/token")[
            "jti"
        ]
        for s in subjects
    }
    assert len(jtis) == 2  # the retry signed a new assertion


def test_jwt_bearer_grant_form(broker, sleeps, ec_key) -> None:
    agent = AgentKey("agent-a", pem(ec_key), "kid-1", broker.url + "/token")
    client = ErrandClient(broker.url, agent, grant="jwt-bearer", sleep=sleeps)
    client.exchange(audience="https://tickets.example", task_id="t-1")
    form = broker.token_requests[0]
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert "assertion" in form and "subject_token" not in form
    assert form["task_id"] == ["t-1"]
