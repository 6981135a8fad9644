"""Entrypoint of the worker image: consumes OFFLOAD_WORKER_QUEUES (default: default,low)."""

from offload_core.settings import get_settings
from offload_core.worker_env import prepare_worker_environment


def main() -> None:
    settings = get_settings()
    # Before Celery and prometheus_client are imported (see worker_env).
    prepare_worker_environment(settings)
    from offload_core.telemetry import WORKER_SERVICE, refuse_unsupported_settings

    refuse_unsupported_settings(WORKER_SERVICE)
    from offload_core.worker_runtime import run_worker
    from offload_worker.app import app

    run_worker(app, queues=settings.WORKER_QUEUES, default_name="worker@%h", service=WORKER_SERVICE)


if __name__ == "__main__":
    main()
