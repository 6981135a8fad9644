"""The Celery app Flower loads (``celery -A offload_core.runtime.flower_app flower``): its broker
connection comes from Offload's settings, so Flower reaches Redis as every other process does,
through a Sentinel set or over verified TLS included."""

from __future__ import annotations

from offload_core.runtime.celery_app import create_celery_app
from offload_core.settings import get_settings

app = create_celery_app(get_settings(), main="offload-flower")
