"""A configuration with the runtime policy on: the payments audience with scope classes,
a human issuer and the approver `alice` (tests of approvals and the console)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.builders import DEPLOY_AUD

PAY = "https://payments.acme.example"


def with_policy(policy_dir: Path) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        raw["issuers"].append(
            {
                "id": "sso",
                "issuer": "https://sso.acme.example",
                "audience": raw["issuers"][0]["audience"],
                "human": True,
                "algorithms": ["ES256"],
            }
        )
        raw["identities"][0]["allow"]["audiences"].append(PAY)
        raw["identities"][0]["allow"]["scopes"] += ["pay:list", "pay:read", "pay:refund"]
        raw["identities"].append(
            {
                "id": "alice",
                "type": "human",
                "owner": "security-team",
                "purpose": "approves high-impact requests",
                "match": [{"issuer": "sso", "claims": {"sub": "alice@acme.example"}}],
                "allow": {"audiences": [PAY], "scopes": ["pay:read"], "max_ttl_seconds": 300},
            }
        )
        raw["audiences"] = [
            {
                "id": PAY,
                "sensitivity": "high",
                "contract_version": "7",
                "scopes": {
                    "discovery": ["pay:list"],
                    "read": ["pay:read"],
                    "high_impact": ["pay:refund"],
                },
            },
            {"id": DEPLOY_AUD, "scopes": {"read": ["deploy:read"], "write": ["deploy:write"]}},
        ]
        raw["policy"] = {
            "dir": str(policy_dir),
            "approvers": ["alice"],
            "approval_ttl_seconds": 600,
            "approval_poll_interval_seconds": 5,
        }

    return mutate
