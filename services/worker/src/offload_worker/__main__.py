"""Entrypoint of the worker image: consumes OFFLOAD_WORKER_QUEUES (default: default,low)."""

import sys

from offload_core.runtime.worker_env import prepare_worker_environment
from offload_core.settings import get_settings


def main() -> None:
    settings = get_settings()
    # Before Celery and prometheus_client are imported (see worker_env).
    prepare_worker_environment(settings)
    from offload_core.contract.registry import JobTypeError
    from offload_core.telemetry import WORKER_SERVICE, refuse_unsupported_settings

    refuse_unsupported_settings(WORKER_SERVICE)
    from offload_core.runtime.worker_runtime import run_worker

    try:
        from offload_worker.app import app
    except JobTypeError as exc:
        # A job plugin this worker cannot use: one line naming it and the fix, no traceback.
        sys.exit(f"offload-worker: {exc}")

    run_worker(app, queues=settings.WORKER_QUEUES, default_name="worker@%h", service=WORKER_SERVICE)


if __name__ == "__main__":
    main()
