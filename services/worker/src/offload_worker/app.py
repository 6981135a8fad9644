"""The worker's Celery app: the shared configuration plus a task for every job type that may run
on the queues this worker consumes (offload_core.registry)."""

from offload_core.celery_app import create_celery_app, register_worker_job_types
from offload_core.settings import get_settings
from offload_worker import (
    emails,  # noqa: F401  (registers offload.send_email)
    images,  # noqa: F401  (registers offload.image.process and .index)
    reports,  # noqa: F401  (registers offload.report)
)

settings = get_settings()
app = create_celery_app(settings, main="offload-worker")
job_types = register_worker_job_types(app, settings, settings.WORKER_QUEUES)
