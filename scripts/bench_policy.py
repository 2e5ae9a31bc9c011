"""What the runtime policy adds to an exchange: one decision (every requested scope, the
baseline tier and the team tier), timed at 1, 100 and 1,000 policies, side by side in one run.

    .venv/bin/python scripts/bench_policy.py [--decisions 2000] [--scopes 1]

The policies are the shipped baseline plus N-4 generated team policies of the shapes people
write (a tag or an attribute compared, a scope class, a purpose), so that each decision
walks all of them. Decision time is the median and p99 of single decisions (µs), measured
with time.perf_counter_ns around CedarPolicy.decide; compile time is once per load."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.domain.models import (  # noqa: E402
    Allowance,
    AudienceSpec,
    Identity,
    PolicyRequest,
)
from broker.policy.cedar_engine import from_texts  # noqa: E402

AUD = "https://payments.example.com"
CLASSES = {"pay:list": "discovery", "pay:read": "read", "pay:write": "write"}
BASELINE = (ROOT / "config" / "policies" / "baseline.cedar").read_text()


def team_policies(n: int) -> str:
    shapes = [
        'permit (principal, action == Action::"pay:read", resource) when {{ '
        'principal.hasTag("repository") && principal.getTag("repository") == "acme/app-{i}" }};',
        'forbid (principal, action, resource) when {{ principal.owner == "team-{i}" && '
        'context.scope_class == "write" }};',
        'permit (principal, action, resource) when {{ context.purpose == "job-{i}" }};',
        'forbid (principal, action, resource) when {{ context.chain.contains("agent-{i}") }};',
    ]
    return "".join(
        f'@id("team-{i}")\n' + shapes[i % len(shapes)].format(i=i) + "\n" for i in range(n)
    )


def request(scopes: tuple[str, ...]) -> PolicyRequest:
    identity = Identity(
        id="acme-deploy",
        type="service",
        owner="platform-team",
        purpose="deploy",
        expires=None,
        rules=(),
        allow=Allowance((AUD,), tuple(CLASSES), (), 300),
    )
    return PolicyRequest(
        identity=identity,
        issuer_id="gha",
        claims={"repository": "acme/app-0", "ref": "refs/heads/main", "run_id": "123"},
        audiences=(AUD,),
        scopes=scopes,
        scope_classes={s: CLASSES[s] for s in scopes},
        purpose="job-2",
        task_id="task-1",
        task_named=True,
        labels=(),
        now=time.time(),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--scopes", type=int, default=1, help="scopes per request (1-2)")
    args = ap.parse_args()
    audiences = {AUD: AudienceSpec(id=AUD, scope_classes=CLASSES)}
    scopes = ("pay:read", "pay:list")[: args.scopes] if args.scopes < 2 else ("pay:read",)
    req = request(scopes)
    print("| policies | compile (ms) | decision median (µs) | p99 (µs) | allowed |")
    print("|---:|---:|---:|---:|---|")
    for total in (1, 100, 1000):
        if total == 1:
            base, team = '@id("only")\npermit (principal, action, resource);\n', None
        else:
            base, team = BASELINE, team_policies(total - 4)
        t0 = time.perf_counter()
        engine = from_texts(base, team, audiences)
        compile_ms = (time.perf_counter() - t0) * 1000
        for _ in range(50):  # warm-up
            engine.decide(req)
        samples = []
        for _ in range(args.decisions):
            start = time.perf_counter_ns()
            verdict = engine.decide(req)
            samples.append((time.perf_counter_ns() - start) / 1000)
        samples.sort()
        p99 = samples[int(len(samples) * 0.99) - 1]
        print(
            f"| {engine.count} | {compile_ms:.1f} | {statistics.median(samples):.1f} | "
            f"{p99:.1f} | {verdict.allowed} |"
        )


if __name__ == "__main__":
    main()
