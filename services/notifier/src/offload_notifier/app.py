"""The notifier's Celery app: the shared configuration plus the critical-notification tasks."""

from offload_core import probe  # noqa: F401  (registers the echo probe)
from offload_core.celery_app import create_celery_app
from offload_core.settings import get_settings

app = create_celery_app(get_settings(), main="offload-notifier")
# Critical work must never wait behind a prefetched message.
app.conf.worker_prefetch_multiplier = 1
