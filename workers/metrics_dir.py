"""The worker's prometheus-client multiprocess directory, set up before anything imports
prometheus_client (so before anything imports broker): `python -m workers` calls
prepare_metrics_dir() first.

Unless PROMETHEUS_MULTIPROC_DIR names one, each worker makes its own (mode 0700, under
$TMPDIR) and removes it when it exits, as config/gunicorn.conf.py does for the web: two
workers on one machine never mix their files, and no start leaves a folder behind. A
directory given in PROMETHEUS_MULTIPROC_DIR is used as it is and left in place (`errand run`
gives the worker the web's, so the broker's /metrics has the worker's counts too)."""

from __future__ import annotations

import os
import shutil
import tempfile


def prepare_metrics_dir() -> str | None:
    """The directory this process made (to remove at exit), or None if it was given."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    made = tempfile.mkdtemp(prefix="errand-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def remove_metrics_dir(made: str | None) -> None:
    if made:
        shutil.rmtree(made, ignore_errors=True)
