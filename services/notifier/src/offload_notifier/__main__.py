"""Entrypoint of the notifier image: consumes OFFLOAD_WORKER_QUEUES, `high` when it is not set."""

import sys

from offload_core.runtime.worker_env import prepare_worker_environment
from offload_core.settings import get_settings


def main() -> None:
    # Before Celery and prometheus_client are imported (see worker_env).
    prepare_worker_environment(get_settings())
    from offload_core.contract.registry import JobTypeError
    from offload_core.telemetry import NOTIFIER_SERVICE, refuse_unsupported_settings

    refuse_unsupported_settings(NOTIFIER_SERVICE)
    from offload_core.runtime.worker_runtime import run_worker

    try:
        from offload_notifier.app import app, queues
    except JobTypeError as exc:
        # A job plugin this notifier cannot use: one line naming it and the fix, no traceback.
        sys.exit(f"offload-notifier: {exc}")

    run_worker(app, queues=queues, default_name="notifier@%h", service=NOTIFIER_SERVICE)


if __name__ == "__main__":
    main()
