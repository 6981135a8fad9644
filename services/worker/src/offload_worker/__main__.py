"""Entrypoint of the worker image: consumes OFFLOAD_WORKER_QUEUES (default: default,low)."""

import os

# Before Celery is imported: SIGTERM then starts the soft shutdown (see worker_runtime).
os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")

from offload_core.settings import get_settings
from offload_core.topology import NOTIFIER_QUEUES
from offload_core.worker_runtime import run_worker


def main() -> None:
    queues = get_settings().WORKER_QUEUES
    if any(queue in NOTIFIER_QUEUES for queue in queues):
        # Allowed (a single shared worker for small setups), but critical work then waits
        # behind everything this worker has prefetched.
        print(f"note: this worker also consumes {', '.join(NOTIFIER_QUEUES)}, the notifier's queue")
    from offload_worker.app import app

    run_worker(app, queues=[str(q) for q in queues], default_name="worker@%h")


if __name__ == "__main__":
    main()
