"""The notifier's Celery app: the shared configuration plus a task for every job type that may run
on `high` (the critical notifications, offload_core.builtin_jobs.notify)."""

import logging

from celery.signals import worker_ready

from offload_core.celery_app import create_celery_app, register_worker_job_types
from offload_core.settings import get_settings
from offload_core.topology import NOTIFIER_QUEUES

app = create_celery_app(get_settings(), main="offload-notifier")
job_types = register_worker_job_types(app, get_settings(), [str(q) for q in NOTIFIER_QUEUES])
# Critical work must never wait behind a prefetched message.
app.conf.worker_prefetch_multiplier = 1


@worker_ready.connect(weak=False)
def _warn_without_signing_secret(**_: object) -> None:
    if not get_settings().WEBHOOK_SECRETS:
        logging.getLogger(__name__).warning(
            "OFFLOAD_WEBHOOK_SECRETS is empty: webhook targets will fail rather than be sent unsigned"
        )
