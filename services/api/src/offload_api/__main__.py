"""Entrypoint of the API image: uvicorn serving offload_api.main:create_app."""

import sys

import uvicorn

from offload_api.limits import MAX_REQUEST_HEAD_BYTES
from offload_core.contract.registry import JobTypeError, load_job_types
from offload_core.logs import configure_logging
from offload_core.settings import get_settings
from offload_core.telemetry import API_SERVICE, refuse_unsupported_settings


def main() -> None:
    refuse_unsupported_settings(API_SERVICE)
    settings = get_settings()
    configure_logging(API_SERVICE, settings)
    try:
        # Checked before uvicorn starts, so a broken job plugin is one line naming it, not a traceback.
        load_job_types(settings)
    except JobTypeError as exc:
        sys.exit(f"offload-api: {exc}")
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
        # h11, not httptools: h11 enforces its cap on the request head (request line and
        # headers) while it parses, so an oversized header or URL is refused after 64 KiB
        # instead of being buffered whole first (httptools has no limit: a 150 MiB header took
        # the process from 97 to 404 MB). offload_api.limits.HeaderSizeLimit answers 431 to
        # heads between its 32 KiB and this cap.
        http="h11",
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        # Beyond this many open connections (or requests in progress) new ones get 503.
        limit_concurrency=settings.API_MAX_CONNECTIONS,
    )


if __name__ == "__main__":
    main()
