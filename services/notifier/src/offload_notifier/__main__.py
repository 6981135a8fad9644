"""Entrypoint of the notifier image: consumes the `high` queue and nothing else."""

import sys

from offload_core.settings import get_settings
from offload_core.topology import NOTIFIER_QUEUES
from offload_core.worker_env import prepare_worker_environment


def main() -> None:
    # Before Celery and prometheus_client are imported (see worker_env).
    prepare_worker_environment(get_settings())
    from offload_core.registry import JobTypeError
    from offload_core.telemetry import NOTIFIER_SERVICE
    from offload_core.worker_runtime import run_worker

    try:
        from offload_notifier.app import app
    except JobTypeError as exc:
        # A job plugin this notifier cannot use: one line naming it and the fix, no traceback.
        sys.exit(f"offload-notifier: {exc}")

    run_worker(app, queues=[str(q) for q in NOTIFIER_QUEUES], default_name="notifier@%h", service=NOTIFIER_SERVICE)


if __name__ == "__main__":
    main()
