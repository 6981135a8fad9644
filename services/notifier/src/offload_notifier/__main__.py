"""Entrypoint of the notifier image: consumes OFFLOAD_WORKER_QUEUES, `high` when it is not set."""

from offload_core.settings import get_settings
from offload_core.worker_env import prepare_worker_environment


def main() -> None:
    # Before Celery and prometheus_client are imported (see worker_env).
    prepare_worker_environment(get_settings())
    from offload_core.telemetry import NOTIFIER_SERVICE, refuse_unsupported_settings

    refuse_unsupported_settings(NOTIFIER_SERVICE)
    from offload_core.worker_runtime import run_worker
    from offload_notifier.app import app, queues

    run_worker(app, queues=queues, default_name="notifier@%h", service=NOTIFIER_SERVICE)


if __name__ == "__main__":
    main()
