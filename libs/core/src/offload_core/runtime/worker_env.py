"""The environment a worker process needs before Celery and prometheus_client are imported:
billiard reads REMAP_SIGTERM and prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, at
import, so the entrypoints call this first. It imports neither.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path

from offload_core.settings import Settings

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def prepare_worker_environment(settings: Settings) -> None:
    # SIGTERM then starts the soft shutdown that hands unfinished tasks back (see worker_runtime).
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    if settings.WORKER_METRICS_PORT:
        # Prefork: each pool process writes its metrics to files here, and the main process sums
        # them when scraped.
        metrics_dir = Path(os.environ.setdefault(MULTIPROC_DIR_VARIABLE, str(settings.WORKER_STATE_DIR / "metrics")))
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prepare_worker_environment must run before prometheus_client is imported")
        _clear_metric_files(metrics_dir)  # a previous run's counts must not be counted again
        metrics_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(_clear_metric_files, metrics_dir, owner_pid=os.getpid())


def _clear_metric_files(metrics_dir: Path, owner_pid: int | None = None) -> None:
    if owner_pid is not None and os.getpid() != owner_pid:
        return  # a forked pool process inherits the handler; only the main process cleans up
    for path in metrics_dir.glob("*.db"):
        path.unlink(missing_ok=True)
    if owner_pid is not None:
        with contextlib.suppress(OSError):  # not empty: the operator's own directory
            metrics_dir.rmdir()
