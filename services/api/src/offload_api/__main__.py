"""Entrypoint of the API image: uvicorn serving offload_api.main:create_app."""

import logging

import uvicorn

from offload_core.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "offload_api.main:create_app",
        factory=True,
        host=settings.API_HOST,
        port=settings.API_PORT,
        log_level=settings.LOG_LEVEL.lower(),
        proxy_headers=True,
        timeout_keep_alive=5,
        # In-flight requests get this long after SIGTERM; below the pod's grace period.
        timeout_graceful_shutdown=20,
        h11_max_incomplete_event_size=64 * 1024,
    )


if __name__ == "__main__":
    main()
