"""python -m examples.mcp_server.demo_config .errand/mcp-demo

Writes what the MCP walkthrough (docs/agents.md, "MCP servers") needs next to `errand run`:

    agent.pem     the agent's EC P-256 private key (mode 0600)
    agent.kid     its key id, as registered
    errand.yaml   config/errand.dev.yaml plus the `notes-agent` identity: its public key, the
                  three example servers as audiences, the notes scopes

Start the broker with it: ERRAND_CONFIG=$PWD/.errand/mcp-demo/errand.yaml errand run"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ROOT = Path(__file__).resolve().parents[2]
SERVERS = (
    "http://127.0.0.1:8001/mcp",
    "http://127.0.0.1:8002/mcp",
    "http://127.0.0.1:8003/mcp",  # the walkthrough's DPoP-only server
)
SCOPES = ["notes:discover", "notes:read", "notes:write"]


def agent_identity(jwk: dict[str, Any], servers: tuple[str, ...] = SERVERS) -> dict[str, Any]:
    return {
        "id": "notes-agent",
        "type": "agent",
        "owner": "notes-team",
        "purpose": "Read and write the team's notes through its MCP servers",
        "keys": {"jwks": {"keys": [jwk]}},
        "allow": {"audiences": list(servers), "scopes": SCOPES},
    }


def write_demo(out: Path) -> str:
    """Write the files; return the key id."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = out / "agent.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    kid = "notes-agent-1"
    jwk.update(kid=kid, alg="ES256", use="sig")
    (out / "agent.kid").write_text(kid + "\n")
    doc = yaml.safe_load((ROOT / "config" / "errand.dev.yaml").read_text())
    doc["identities"].append(agent_identity(jwk))
    (out / "errand.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return kid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.mcp_server.demo_config")
    parser.add_argument("out", type=Path, help="a directory for the key and the configuration")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    kid = write_demo(args.out)
    print(f"wrote {args.out}/agent.pem, agent.kid ({kid}) and errand.yaml")


if __name__ == "__main__":
    main()
