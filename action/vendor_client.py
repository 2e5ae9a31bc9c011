"""Copy ../errand_client into action/errand_client for the Action's image.

GitHub builds a Dockerfile action with the Dockerfile's own directory (action/) as the build
context, so the image cannot COPY ../errand_client. Run this after changing errand_client:

    python action/vendor_client.py

tests/unit/errand_client/test_client_action.py fails when the copy differs from the source."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "errand_client"
TARGET = HERE / "errand_client"


def source_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SOURCE.glob("*.py"))}


def vendored_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(TARGET.glob("*.py"))} if TARGET.is_dir() else {}


def main() -> int:
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir()
    for name, data in source_files().items():
        (TARGET / name).write_bytes(data)
    print(f"copied {len(source_files())} files into {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
