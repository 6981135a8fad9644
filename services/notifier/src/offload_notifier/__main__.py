"""Entrypoint of the notifier image: consumes the `high` queue and nothing else."""

import os

# Before Celery is imported: SIGTERM then starts the soft shutdown (see worker_runtime).
os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")

from offload_core.topology import NOTIFIER_QUEUES
from offload_core.worker_runtime import run_worker


def main() -> None:
    from offload_notifier.app import app

    run_worker(app, queues=[str(q) for q in NOTIFIER_QUEUES], default_name="notifier@%h")


if __name__ == "__main__":
    main()
