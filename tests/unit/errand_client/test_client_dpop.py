"""ErrandClient(dpop=...): a fresh proof on every token request, one retry with the broker's
nonce (RFC 9449 §8), and a token that must come back as DPoP."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import requests

from errand_client import ErrandClient
from errand_client.errors import ErrandError, TokenRequestError
from tests.support.dpop import DpopKey, access_token_hash

URL = "https://errand.example"


class ScriptedSession(requests.Session):
    """Answers POSTs from a script and keeps what was sent."""

    def __init__(self, *answers: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[dict[str, str]] = []

    def post(self, url: str, **kw: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(dict(kw["headers"]))
        status, body, headers = self.answers.pop(0)
        resp = requests.Response()
        resp.status_code = status
        resp._content = json.dumps(body).encode()
        resp.headers.update({"Content-Type": "application/json", **headers})
        return resp


def ok(token_type: str = "DPoP", **headers: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"access_token": "eyJ.at", "token_type": token_type, "expires_in": 300,
            "scope": "s", "task_id": "t1"}  # fmt: skip
    return 200, body, headers


def client(session: ScriptedSession, dpop: Any = True) -> ErrandClient:
    return ErrandClient(URL, lambda: "subject", session=session, dpop=dpop)


def test_each_request_carries_a_fresh_proof_for_the_token_endpoint() -> None:
    session = ScriptedSession(ok(), ok())
    c = client(session)
    issued = c.exchange(task_id="t1")
    c.exchange(task_id="t1")
    assert issued.token_type == "DPoP"
    proofs = [h["DPoP"] for h in session.sent]
    assert proofs[0] != proofs[1]
    claims = jwt.decode(proofs[0], options={"verify_signature": False})
    assert claims["htm"] == "POST" and claims["htu"] == URL + "/token"
    assert jwt.get_unverified_header(proofs[0])["typ"] == "dpop+jwt"
    with pytest.raises(ErrandError):
        issued.headers()  # a bound token is never sent as Bearer


def test_nonce_retry() -> None:
    want = (400, {"error": "use_dpop_nonce", "error_description": "nonce"}, {"DPoP-Nonce": "n1"})
    session = ScriptedSession(want, ok(**{"DPoP-Nonce": "n2"}), ok())
    c = client(session)
    c.exchange(task_id="t1")
    first, retry = (
        jwt.decode(h["DPoP"], options={"verify_signature": False}) for h in session.sent
    )
    assert "nonce" not in first and retry["nonce"] == "n1"
    c.exchange(task_id="t1")  # the nonce of the last answer goes into the next proof
    assert jwt.decode(session.sent[2]["DPoP"], options={"verify_signature": False})["nonce"] == "n2"


def test_a_bearer_answer_to_a_dpop_request_is_refused() -> None:
    with pytest.raises(TokenRequestError, match="DPoP"):
        client(ScriptedSession(ok("Bearer"))).exchange(task_id="t1")


def test_a_given_key_is_used_and_no_key_sends_no_proof() -> None:
    key = DpopKey.generate()
    session = ScriptedSession(ok())
    client(session, key).exchange(task_id="t1")
    assert jwt.get_unverified_header(session.sent[0]["DPoP"])["jwk"] == key.public_jwk
    plain = ScriptedSession(ok("Bearer"))
    client(plain, False).exchange(task_id="t1")
    assert "DPoP" not in plain.sent[0]
    assert "DpopKey(jkt=" in repr(key) and "private" not in repr(key).lower()


def test_mcp_tokens_sign_every_request_with_the_clients_key() -> None:
    from errand_client.mcp import McpTokens

    session = ScriptedSession(ok())
    c = client(session)
    tokens = McpTokens(c, "t1", purpose=None)  # the client binds: its key signs
    assert (
        tokens.dpop is c.dpop_key and McpTokens(c, "t1", purpose=None, dpop=True).dpop is c.dpop_key
    )
    url = "https://mcp.example/mcp"
    first = tokens.headers(url, body=b'{"a":1}')
    second = tokens.headers(url, body=b'{"a":1}')
    assert first["Authorization"] == "DPoP eyJ.at" and first["DPoP"] != second["DPoP"]
    claims = jwt.decode(first["DPoP"], options={"verify_signature": False})
    assert claims["htu"] == url and claims["content_digest"] == first["Content-Digest"]
    assert len(session.sent) == 1  # one token for the server, a fresh proof per request
    with pytest.raises(ValueError, match="bound to the client's"):
        McpTokens(c, "t1", purpose=None, dpop=DpopKey.generate())
    with pytest.raises(ValueError, match="need DPoP proofs"):
        McpTokens(c, "t1", purpose=None, dpop=False)
    with pytest.raises(ValueError, match="dpop=True needs"):
        McpTokens(client(ScriptedSession(), dpop=False), "t1", purpose=None, dpop=True)


class TaskSession(ScriptedSession):
    """Also answers the task endpoints (any method) from the script."""

    def __init__(self, *answers: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        super().__init__(*answers)
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:  # type: ignore[override]
        self.calls.append((method, url))
        return self.post(url, **kw)


def test_task_calls_of_a_bound_token_sign_with_the_clients_key() -> None:
    moved = (200, {"task_id": "t1", "state": "suspended"}, {})
    want = (401, {"error": "use_dpop_nonce", "error_description": "nonce"},
            {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "rn"})  # fmt: skip
    session = TaskSession(
        ok(), moved, (200, {"task_id": "t1", "state": "running"}, {}), want, moved,
        (200, {"task_id": "t1", "completed": True}, {}),
    )  # fmt: skip
    c = client(session)
    issued = c.exchange(task_id="t1")
    assert c.suspend(issued) == {"task_id": "t1", "state": "suspended"}
    assert c.show(issued) == {"task_id": "t1", "state": "running"}
    assert c.cancel(issued) == {"task_id": "t1", "state": "suspended"}  # after one nonce retry
    assert c.complete(issued) is True
    assert session.calls == [
        ("POST", URL + "/tasks/t1/suspend"),
        ("GET", URL + "/tasks/t1"),
        ("POST", URL + "/tasks/t1/cancel"),
        ("POST", URL + "/tasks/t1/cancel"),
        ("POST", URL + "/tasks/complete"),
    ]
    task_headers = session.sent[1:]
    assert all(h["Authorization"] == "DPoP eyJ.at" for h in task_headers)
    claims = [jwt.decode(h["DPoP"], options={"verify_signature": False}) for h in task_headers]
    assert len({c["jti"] for c in claims}) == len(claims)  # a fresh proof every time
    assert [(c["htm"], c["htu"]) for c in claims] == session.calls
    assert all(c["ath"] == access_token_hash("eyJ.at") for c in claims)
    assert "nonce" not in claims[2] and claims[3]["nonce"] == "rn"  # the retry carries it
    assert claims[4]["nonce"] == "rn"  # and later proofs to the broker too


def test_a_refused_proof_is_an_error_not_an_ended_task() -> None:
    refused = (401, {"error": "invalid_dpop_proof", "error_description": "replayed"},
               {"WWW-Authenticate": 'DPoP error="invalid_dpop_proof", algs="ES256"'})  # fmt: skip
    gone = (401, {"error": "invalid_token", "error_description": "inactive"},
            {"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip
    c = client(TaskSession(ok(), refused, gone))
    issued = c.exchange(task_id="t1")
    with pytest.raises(TokenRequestError, match="invalid_dpop_proof"):
        c.complete(issued)
    assert c.complete(issued) is False  # a dead token: the task already ended


def test_a_bound_token_string_needs_the_key() -> None:
    bound = "eyJhbGciOiJFUzI1NiJ9." + _b64({"cnf": {"jkt": "x"}, "task_id": "t1"}) + ".sig"
    with pytest.raises(ErrandError, match="key"):
        ErrandClient(URL, lambda: "subject", session=TaskSession()).complete(bound)
    session = TaskSession((200, {"task_id": "t1", "completed": True}, {}))
    assert client(session).complete(bound) is True
    assert session.sent[0]["Authorization"] == f"DPoP {bound}"
    plain = TaskSession((200, {"task_id": "t1", "completed": True}, {}))
    assert client(plain).complete("eyJ.e30.sig") is True  # no cnf: Bearer, even with a key
    assert plain.sent[0]["Authorization"] == "Bearer eyJ.e30.sig" and "DPoP" not in plain.sent[0]


def _b64(claims: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
