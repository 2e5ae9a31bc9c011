"""What DPoP costs, side by side in one run (the machine is noisy: compare, don't quote alone).

  1. exchange: POST /token through the real Flask app on a private Redis, with and without a
     DPoP proof (the proof check, the jti SET NX and the cnf claim); the client's cost of
     building one proof is timed separately;
  2. resource server: errand_rs verifications per second of a Bearer token (offline, JWKS
     cached) and of a DPoP-bound token with its proof (ath, jkt, replay cache), the proofs
     built beforehand so only verification is timed.

Batches alternate (without, with, without, ...) so drift hits both sides alike.

Usage: .venv/bin/python scripts/bench_dpop.py [--exchanges 400] [--verifications 3000] [--rounds 4]
Never touches the Redis on 6379: it starts its own redis-server on a free port."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.dev.embedded_redis import RedisProcess  # noqa: E402
from broker.dev.issuer import load_or_create_key  # noqa: E402
from broker.services import build_services  # noqa: E402
from broker.settings import Settings  # noqa: E402
from broker.tokens.keyring import KeyRing, generate_key  # noqa: E402
from broker.tokens.mint import mint_access_token  # noqa: E402
from errand_client.dpop import DpopKey  # noqa: E402
from errand_rs import DpopChecker, ErrandVerifier, authenticate, authenticate_dpop  # noqa: E402
from tests.support.builders import (  # noqa: E402
    BROKER_ISSUER,
    UNIT_ISSUER,
    StaticFetcher,
    gha_token,
    make_app,
    make_config,
)
from tests.support.fake_broker import RS_AUDIENCE, FakeBroker, make_grant  # noqa: E402
from tests.support.forms import deploy_form  # noqa: E402

TOKEN_URL = BROKER_ISSUER + "/token"


def bench_exchange(n: int, rounds: int, tmp: Path) -> dict[str, float]:
    issuer_key = load_or_create_key(tmp / "issuer.pem")
    redis_server = RedisProcess(tmp / "redis").start()
    try:
        key_dir = tmp / "keys"
        key_dir.mkdir()
        generate_key(key_dir)
        settings = Settings(
            config_path=Path("unused.yaml"), redis_url=redis_server.url, signing_key_dir=key_dir
        )
        svc = build_services(
            settings,
            config=make_config(UNIT_ISSUER),
            fetcher=StaticFetcher({"keys": [issuer_key.public_jwk()]}),
        )
        client = make_app(svc, tmp).test_client()
        dpop_key = DpopKey.generate()
        per_round: dict[str, list[float]] = {"bearer": [], "dpop": []}
        for _ in range(rounds):
            for kind in ("bearer", "dpop"):
                forms = [
                    deploy_form(gha_token(issuer_key, UNIT_ISSUER, now=time.time()))
                    for _ in range(n)
                ]
                proofs = [
                    dpop_key.proof("POST", TOKEN_URL) if kind == "dpop" else None for _ in range(n)
                ]
                started = time.perf_counter()
                for form, proof in zip(forms, proofs, strict=True):
                    resp = client.post(
                        "/token", data=form, headers={"DPoP": proof} if proof else {}
                    )
                    assert resp.status_code == 200, resp.get_json()
                per_round[kind].append((time.perf_counter() - started) / n * 1e3)
        started = time.perf_counter()
        for _ in range(n):
            dpop_key.proof("POST", TOKEN_URL)
        proof_ms = (time.perf_counter() - started) / n * 1e3
        return {
            "exchange_bearer_ms": statistics.median(per_round["bearer"]),
            "exchange_dpop_ms": statistics.median(per_round["dpop"]),
            "client_proof_ms": proof_ms,
        }
    finally:
        redis_server.stop()


def bench_rs(n: int, rounds: int, tmp: Path) -> dict[str, float]:
    keys_dir = tmp / "rs-keys"
    keys_dir.mkdir()
    generate_key(keys_dir)
    ring = KeyRing.from_dir(keys_dir)
    broker = FakeBroker().start()
    try:
        broker.publish(ring.active)
        verifier = ErrandVerifier(broker.url, RS_AUDIENCE)
        dpop_key = DpopKey.generate()
        bearer = mint_access_token(make_grant(exp=int(time.time()) + 3600), ring, broker.url)
        bound = mint_access_token(
            make_grant(exp=int(time.time()) + 3600, dpop_jkt=dpop_key.jkt), ring, broker.url
        )
        url = "https://orders.example/orders"
        verifier.verify(bearer)  # warm the JWKS cache
        per_round: dict[str, list[float]] = {"bearer": [], "dpop": []}
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(n):
                authenticate(verifier, None, f"Bearer {bearer}", ["orders:read"])
            per_round["bearer"].append(n / (time.perf_counter() - started))
            checker = DpopChecker()
            proofs = [dpop_key.proof("GET", url, access_token=bound) for _ in range(n)]
            started = time.perf_counter()
            for proof in proofs:
                authenticate_dpop(
                    verifier,
                    None,
                    checker,
                    authorization=f"DPoP {bound}",
                    proofs=[proof],
                    method="GET",
                    url=url,
                    body=b"",
                    required_scopes=["orders:read"],
                )
            per_round["dpop"].append(n / (time.perf_counter() - started))
        return {
            "rs_bearer_per_s": statistics.median(per_round["bearer"]),
            "rs_dpop_per_s": statistics.median(per_round["dpop"]),
        }
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=400, help="exchanges per batch")
    parser.add_argument("--verifications", type=int, default=3000, help="RS checks per batch")
    parser.add_argument("--rounds", type=int, default=4, help="batches of each kind")
    args = parser.parse_args()
    logging.getLogger("errand.audit").setLevel(logging.CRITICAL)  # one line per exchange
    with tempfile.TemporaryDirectory() as tmp:
        ex = bench_exchange(args.exchanges, args.rounds, Path(tmp))
        rs = bench_rs(args.verifications, args.rounds, Path(tmp))
    added = ex["exchange_dpop_ms"] - ex["exchange_bearer_ms"]
    ratio = rs["rs_dpop_per_s"] / rs["rs_bearer_per_s"]
    lines = [
        f"exchange (in process, real Redis), median of {args.rounds} x {args.exchanges}:",
        f"  without DPoP  {ex['exchange_bearer_ms']:.2f} ms",
        f"  with DPoP     {ex['exchange_dpop_ms']:.2f} ms  (+{added:.2f} ms)",
        f"  client: building one proof {ex['client_proof_ms']:.3f} ms",
        f"errand_rs verifications/s, one thread, median of {args.rounds} x {args.verifications}:",
        f"  Bearer        {rs['rs_bearer_per_s']:.0f}/s",
        f"  DPoP + proof  {rs['rs_dpop_per_s']:.0f}/s  ({ratio:.0%} of Bearer)",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
