"""Entrypoint of the API image: uvicorn serving offload_api.main:create_app."""

import sys

import uvicorn

from offload_core.logs import configure_logging
from offload_core.registry import JobTypeError, load_job_types
from offload_core.settings import get_settings
from offload_core.telemetry import API_SERVICE, refuse_unsupported_settings


def main() -> None:
    refuse_unsupported_settings(API_SERVICE)
    settings = get_settings()
    configure_logging(API_SERVICE, settings)
    try:
        load_job_types(settings)  # a broken plugin stops us here, clearly
    except JobTypeError as exc:
        sys.exit(f"offload-api cannot start: {exc}")
    uvicorn.run(
        "offload_api.main:create_app",
        factory=True,
        host=settings.API_HOST,
        port=settings.API_PORT,
        log_level=settings.LOG_LEVEL.lower(),
        log_config=None,  # uvicorn's loggers go through ours (JSON, masked)
        proxy_headers=True,
        timeout_keep_alive=5,
        # In-flight requests get this long after SIGTERM; below the pod's grace period.
        timeout_graceful_shutdown=20,
        # h11's cap on a request head; the httptools parser (used when installed) has none, so
        # offload_api.limits.HeaderSizeLimit refuses oversized headers whichever parser runs.
        h11_max_incomplete_event_size=64 * 1024,
    )


if __name__ == "__main__":
    main()
