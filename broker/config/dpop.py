"""The `dpop:` section to DpopOptions: the nonce secret read from its file here, once, like a
client secret (never kept in the YAML itself)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.domain.models import DpopOptions

MIN_NONCE_SECRET_BYTES = 32


def dpop_options_from(
    data: Mapping[str, Any] | None, base_dir: Path, errors: list[str]
) -> DpopOptions:
    if data is None:
        return DpopOptions()
    secret = b""
    if data["nonce_secret_file"]:
        path = Path(data["nonce_secret_file"])
        if not path.is_absolute():
            path = base_dir / path
        try:
            secret = path.read_bytes().strip()
        except OSError as err:
            errors.append(f"dpop.nonce_secret_file: cannot read {path}: {err.strerror}")
        else:
            if len(secret) < MIN_NONCE_SECRET_BYTES:
                errors.append(
                    f"dpop.nonce_secret_file: the secret must be at least "
                    f"{MIN_NONCE_SECRET_BYTES} bytes"
                )
    return DpopOptions(
        proof_max_age_seconds=data["proof_max_age_seconds"],
        algorithms=tuple(data["algorithms"]),
        require_nonce=data["require_nonce"],
        nonce_secret=secret,
        nonce_lifetime_seconds=data["nonce_lifetime_seconds"],
        required_audiences=tuple(data["required_audiences"]),
    )
