"""The worker's Celery app: the shared configuration plus the tasks this image runs."""

from offload_core import probe  # noqa: F401  (registers the echo probe)
from offload_core.celery_app import create_celery_app
from offload_core.settings import get_settings
from offload_worker import (
    emails,  # noqa: F401  (registers offload.send_email)
    images,  # noqa: F401  (registers offload.image.process and .index)
    reports,  # noqa: F401  (registers offload.report)
)

app = create_celery_app(get_settings(), main="offload-worker")
