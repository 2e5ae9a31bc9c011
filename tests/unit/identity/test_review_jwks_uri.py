"""A discovery document (or a configured URL) cannot point the key fetch anywhere.

Before: whatever `jwks_uri` an issuer's discovery document named was fetched: plain http
under an https issuer, another origin, the cloud metadata address, an internal address, a
query string. Now (broker/identity/egress.py) a discovered jwks_uri must be https on the
issuer's origin or on a host its `jwks_hosts` lists, and every URL fetched has every address
its host resolves to checked; each refusal happens before any request, and the issuer's keys
are then unavailable (a retryable 503), never fetched from the refused place.

Two kinds of network: real HTTP servers on 127.0.0.1 (a discovery server and a
CountingListener that proves no request reached it), and, for https issuers that cannot run
here, a fake transport and resolver passed to HttpJwksFetcher that record every request and
lookup."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from broker.clock import FixedClock
from broker.identity.errors import KeysUnavailable
from broker.identity.jwks import HttpJwksFetcher, JwksCache
from broker.store.jwks_mirror import JwksMirror
from tests.support.builders import fake_services, gha_token, make_app, make_config
from tests.support.forms import deploy_form
from tests.support.http import assert_oauth_error
from tests.support.servers import CountingListener

HTTPS_ISSUER = "https://issuer.example"
PUBLIC_IP = "93.184.216.34"


# -- a discovery server on 127.0.0.1 --------------------------------------------------------------


class DiscoveryServer:
    """Serves discovery (with the jwks_uri a test chooses) and a JWKS; counts every request."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.jwks_uri: str | None = None  # None: this server's own /jwks
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": owner.url, "jwks_uri": owner.jwks_uri or owner.url + "/jwks"}
                elif self.path.startswith("/jwks"):
                    body = owner.jwks
                else:
                    self.send_error(404)
                    return
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def jwks_requests(self) -> int:
        return sum(1 for p in self.paths if p.startswith("/jwks"))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def jwks(issuer_key: Any) -> dict[str, Any]:
    return {"keys": [issuer_key.public_jwk()]}


@pytest.fixture
def discovery(jwks: dict[str, Any]) -> Iterator[DiscoveryServer]:
    server = DiscoveryServer(jwks)
    yield server
    server.stop()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    server = CountingListener().start()
    yield server
    server.stop()


# -- a fake transport for https issuers -----------------------------------------------------------


class FakeNetwork:
    """HttpJwksFetcher's `get` and `resolve`: documents by URL, addresses by host name."""

    def __init__(self, docs: dict[str, Any], dns: dict[str, list[str]]) -> None:
        self.docs, self.dns = docs, dns
        self.requests: list[str] = []
        self.lookups: list[str] = []

    def get(self, url: str, timeout: float) -> bytes:
        self.requests.append(url)
        if url not in self.docs:
            raise KeysUnavailable("the issuer's keys are unavailable", debug=f"{url}: 404")
        return json.dumps(self.docs[url]).encode()

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.dns.get(host, [])

    def fetcher(self) -> HttpJwksFetcher:
        return HttpJwksFetcher(get=self.get, resolve=self.resolve)


def https_network(jwks_uri: str, jwks: dict[str, Any], **dns: list[str]) -> FakeNetwork:
    docs = {
        HTTPS_ISSUER + "/.well-known/openid-configuration": {
            "issuer": HTTPS_ISSUER,
            "jwks_uri": jwks_uri,
        },
        jwks_uri: jwks,
    }
    return FakeNetwork(docs, {"issuer.example": [PUBLIC_IP], **dns})


def issuer_for(url: str, **issuer_keys: Any) -> Any:
    config = make_config(url, lambda raw: raw["issuers"][0].update(issuer_keys))
    return config.issuers["gha"]


def cache(fetcher: Any, clock: FixedClock) -> JwksCache:
    mirror = JwksMirror(fakeredis.FakeStrictRedis(decode_responses=True))
    return JwksCache(fetcher, mirror, clock, sleep=lambda s: None, monotonic=clock.now)


def assert_refused(fetcher: Any, issuer: Any, kid: str, clock: FixedClock) -> None:
    with pytest.raises(KeysUnavailable) as info:
        cache(fetcher, clock).key_for(issuer, kid)
    assert "refused" in (info.value.debug or ""), info.value.debug


# -- refused shapes -------------------------------------------------------------------------------


@pytest.mark.regression
def test_review_plain_http_jwks_uri_under_an_https_issuer_is_refused(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock
) -> None:
    net = https_network("http://issuer.example/jwks", jwks)
    assert_refused(net.fetcher(), issuer_for(HTTPS_ISSUER), issuer_key.kid, clock)
    assert net.requests == [HTTPS_ISSUER + "/.well-known/openid-configuration"]


@pytest.mark.regression
def test_review_plain_http_jwks_uri_on_loopback_under_an_https_issuer_makes_no_request(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock, listener: CountingListener
) -> None:
    net = https_network(listener.url + "/jwks", jwks)
    assert_refused(net.fetcher(), issuer_for(HTTPS_ISSUER), issuer_key.kid, clock)
    assert listener.hits == []


@pytest.mark.regression
def test_review_jwks_uri_on_another_origin_is_refused(
    discovery: DiscoveryServer, listener: CountingListener, issuer_key: Any, clock: FixedClock
) -> None:
    discovery.jwks_uri = listener.url + "/jwks"  # same host, another port: another origin
    assert_refused(HttpJwksFetcher(), issuer_for(discovery.url), issuer_key.kid, clock)
    assert listener.hits == []


@pytest.mark.regression
def test_review_https_jwks_uri_on_another_host_is_refused_unless_listed(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock
) -> None:
    uri = "https://keys.elsewhere.example/jwks"
    net = https_network(uri, jwks, **{"keys.elsewhere.example": [PUBLIC_IP]})
    assert_refused(net.fetcher(), issuer_for(HTTPS_ISSUER), issuer_key.kid, clock)
    assert uri not in net.requests
    listed = issuer_for(HTTPS_ISSUER, jwks_hosts=["keys.elsewhere.example"])
    assert cache(net.fetcher(), clock).key_for(listed, issuer_key.kid).kid == issuer_key.kid


@pytest.mark.regression
@pytest.mark.parametrize("private_network", [False, True], ids=["default", "private-allowed"])
def test_review_metadata_address_is_refused_even_when_listed(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock, private_network: bool
) -> None:
    uri = "https://169.254.169.254/latest/meta-data/jwks"
    net = https_network(uri, jwks)
    issuer = issuer_for(
        HTTPS_ISSUER, jwks_hosts=["169.254.169.254"], allow_private_network=private_network
    )
    assert_refused(net.fetcher(), issuer, issuer_key.kid, clock)
    assert uri not in net.requests


@pytest.mark.regression
def test_review_private_address_is_refused_unless_the_issuer_allows_it(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock
) -> None:
    uri = "https://10.1.2.3/jwks"
    net = https_network(uri, jwks)
    assert_refused(net.fetcher(), issuer_for(HTTPS_ISSUER, jwks_hosts=["10.1.2.3"]), "k", clock)
    assert uri not in net.requests
    allowed = issuer_for(HTTPS_ISSUER, jwks_hosts=["10.1.2.3"], allow_private_network=True)
    assert cache(net.fetcher(), clock).key_for(allowed, issuer_key.kid).kid == issuer_key.kid


@pytest.mark.regression
def test_review_a_name_with_any_private_address_is_refused(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock
) -> None:
    """Every resolved address is checked, not just the first."""
    net = https_network(HTTPS_ISSUER + "/jwks", jwks)
    net.dns["issuer.example"] = [PUBLIC_IP, "10.0.0.5"]
    assert_refused(net.fetcher(), issuer_for(HTTPS_ISSUER), issuer_key.kid, clock)
    assert net.requests == []  # not even discovery


@pytest.mark.regression
def test_review_jwks_uri_with_a_query_string_is_refused(
    discovery: DiscoveryServer, issuer_key: Any, clock: FixedClock
) -> None:
    discovery.jwks_uri = discovery.url + "/jwks?tenant=other"
    assert_refused(HttpJwksFetcher(), issuer_for(discovery.url), issuer_key.kid, clock)
    assert discovery.jwks_requests == 0


@pytest.mark.regression
def test_review_configured_jwks_uri_resolving_to_a_private_address_is_refused(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock
) -> None:
    uri = "https://keys.corp.example/jwks"
    net = FakeNetwork({uri: jwks}, {"keys.corp.example": ["192.168.4.4"]})
    issuer = issuer_for(HTTPS_ISSUER, jwks_uri=uri)
    assert_refused(net.fetcher(), issuer, issuer_key.kid, clock)
    assert net.requests == []


@pytest.mark.regression
def test_review_agent_jwks_uri_resolving_to_a_private_address_is_refused(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock
) -> None:
    uri = "https://agent-keys.example/jwks"

    def agent(**keys: Any) -> Any:
        def mutate(raw: dict[str, Any]) -> None:
            raw["identities"].append(
                {
                    "id": "agent-x",
                    "type": "agent",
                    "owner": "ai-team",
                    "purpose": "triage",
                    "keys": {"jwks_uri": uri, "algorithms": ["ES256"], **keys},
                    "allow": {"audiences": ["https://tickets.example"], "scopes": ["t:read"]},
                }
            )

        return make_config(HTTPS_ISSUER, mutate).agent_issuers["agent-x"]

    net = FakeNetwork({uri: jwks}, {"agent-keys.example": ["10.9.9.9"]})
    assert_refused(net.fetcher(), agent(), issuer_key.kid, clock)
    assert net.requests == []
    allowed = agent(allow_private_network=True)
    assert cache(net.fetcher(), clock).key_for(allowed, issuer_key.kid).kid == issuer_key.kid


# -- what still works -----------------------------------------------------------------------------


def test_review_same_origin_jwks_uri_is_fetched(
    jwks: dict[str, Any], issuer_key: Any, clock: FixedClock, discovery: DiscoveryServer
) -> None:
    net = https_network(HTTPS_ISSUER + "/keys", jwks)
    assert cache(net.fetcher(), clock).key_for(issuer_for(HTTPS_ISSUER), issuer_key.kid)
    # A development issuer on loopback keeps working over plain http, on its own origin.
    assert cache(HttpJwksFetcher(), clock).key_for(issuer_for(discovery.url), issuer_key.kid)
    assert discovery.jwks_requests == 1


# -- through POST /token ------------------------------------------------------------------------


@pytest.mark.regression
def test_review_refused_jwks_uri_is_a_503_and_no_request(
    discovery: DiscoveryServer,
    listener: CountingListener,
    issuer_key: Any,
    clock: FixedClock,
    key_dir: Path,
    tmp_path: Path,
) -> None:
    discovery.jwks_uri = listener.url + "/jwks"
    svc = fake_services(make_config(discovery.url), key_dir, clock=clock)  # real HTTP fetcher
    client = make_app(svc, tmp_path).test_client()
    token = gha_token(issuer_key, discovery.url, now=clock.now())
    resp = client.post("/token", data=deploy_form(token))
    assert_oauth_error(resp, 503, "temporarily_unavailable")
    assert listener.hits == []
