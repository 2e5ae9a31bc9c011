"""What the runtime policy adds to an exchange: one decision (every requested scope, the
baseline tier and the team tier), timed at 1, 100 and 1,000 policies, before (every policy
evaluated, `partitioned=False`) and after (partitioned by scope head), side by side in one run.

    .venv/bin/python scripts/bench_policy.py [--decisions 2000] [--scopes 1]

The policies are the shipped baseline plus N-4 generated team policies of the shapes people
write (a tag or an attribute compared, a scope class, a purpose), in two populations:

    scoped     each team policy names the audience it is about (`resource == Audience::...`),
               spread over 100 audiences; the request's audience is one of them
    unscoped   no team policy names an audience or a scope: every policy can match every
               request (the worst case: partitioning cannot skip anything)

Decision time is the median and p99 of single decisions (µs), measured with
time.perf_counter_ns around CedarPolicy.decide; compile time is once per load (the
partitioned engine compiles a partition the first time a request needs it, in the warm-up)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

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


def audience_of(i: int) -> str:
    return AUD if i % 100 == 0 else f"https://api-{i % 100}.example.com"


def team_policies(n: int, *, scoped: bool) -> str:
    shapes = [
        'permit (principal, action == Action::"pay:read", {res}) when {{ '
        'principal.hasTag("repository") && principal.getTag("repository") == "acme/app-{i}" }};',
        'forbid (principal, action, {res}) when {{ principal.owner == "team-{i}" && '
        'context.scope_class == "write" }};',
        'permit (principal, action, {res}) when {{ context.purpose == "job-{i}" }};',
        'forbid (principal, action, {res}) when {{ context.chain.contains("agent-{i}") }};',
    ]
    out = []
    for i in range(n):
        res = f'resource == Audience::"{audience_of(i)}"' if scoped else "resource"
        out.append(f'@id("team-{i}")\n' + shapes[i % len(shapes)].format(i=i, res=res) + "\n")
    return "".join(out)


def verdict_key(v: Any) -> tuple[Any, ...]:
    return (v.allowed, v.deny_class, sorted(v.policies), v.detail)


def timed(engine: Any, req: PolicyRequest, decisions: int) -> tuple[float, float, bool]:
    for _ in range(50):  # warm-up (and the partitions this request needs get compiled)
        engine.decide(req)
    samples = []
    for _ in range(decisions):
        start = time.perf_counter_ns()
        verdict = engine.decide(req)
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1], verdict.allowed


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
    print(
        "| policies | population | compile (ms) | before: median (µs) | before: p99 | "
        "after: median (µs) | after: p99 | same verdict |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    cases = [(1, "-")] + [(n, pop) for n in (100, 1000) for pop in ("scoped", "unscoped")]
    for total, population in cases:
        if total == 1:
            base, team = '@id("only")\npermit (principal, action, resource);\n', None
        else:
            base, team = BASELINE, team_policies(total - 4, scoped=population == "scoped")
        before = from_texts(base, team, audiences, partitioned=False)
        t0 = time.perf_counter()
        after = from_texts(base, team, audiences)
        compile_ms = (time.perf_counter() - t0) * 1000
        b_med, b_p99, b_ok = timed(before, req, args.decisions)
        a_med, a_p99, a_ok = timed(after, req, args.decisions)
        same = verdict_key(before.decide(req)) == verdict_key(after.decide(req))
        print(
            f"| {after.count} | {population} | {compile_ms:.1f} | {b_med:.1f} | {b_p99:.1f} | "
            f"{a_med:.1f} | {a_p99:.1f} | {same and a_ok == b_ok} |"
        )


if __name__ == "__main__":
    main()
