"""The worker's Celery app: the shared configuration plus a task for every job type that may run
on the queues this worker consumes (offload_core.contract.registry)."""

from offload_core.runtime.celery_app import create_celery_app, register_worker_job_types
from offload_core.settings import get_settings

settings = get_settings()
app = create_celery_app(settings, main="offload-worker")
job_types = register_worker_job_types(app, settings, settings.WORKER_QUEUES)
