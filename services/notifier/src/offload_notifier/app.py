"""The notifier's Celery app: the shared configuration plus the critical-notification tasks and any
job type on the queues it consumes."""

import logging

from celery.signals import worker_ready

from offload_core.celery_app import create_celery_app, register_worker_job_types
from offload_core.settings import get_settings
from offload_core.topology import NOTIFIER_QUEUES
from offload_notifier import notify  # noqa: F401  (registers the notification task)

# Its worker set's queues (the chart sets OFFLOAD_WORKER_QUEUES); `high` alone by default.
queues = get_settings().consumed_queues(NOTIFIER_QUEUES)
app = create_celery_app(get_settings(), main="offload-notifier")
job_types = register_worker_job_types(app, get_settings(), queues)
# Critical work must never wait behind a prefetched message.
app.conf.worker_prefetch_multiplier = 1


@worker_ready.connect(weak=False)
def _warn_without_signing_secret(**_: object) -> None:
    if not get_settings().WEBHOOK_SECRETS:
        logging.getLogger(__name__).warning(
            "OFFLOAD_WEBHOOK_SECRETS is empty: webhook targets will fail rather than be sent unsigned"
        )


@worker_ready.connect(weak=False)
def _warn_without_notifier_queues(**_: object) -> None:
    missing = [str(queue) for queue in NOTIFIER_QUEUES if queue not in queues]
    if missing:
        # Allowed (a deployment may run critical notifications elsewhere), but rarely meant.
        logging.getLogger(__name__).warning(
            "this notifier does not consume %s (OFFLOAD_WORKER_QUEUES=%s): critical notifications wait for "
            "another consumer",
            ", ".join(missing),
            ",".join(queues),
        )
