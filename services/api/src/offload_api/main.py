"""The Offload API application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from offload_api import metrics
from offload_api.audit import AuditLog, AuditTrail
from offload_api.auth import ApiKeyAuth, document_api_key
from offload_api.background import TaskTracker
from offload_api.compute import ComputeQueue
from offload_api.enqueue import JobPublisher
from offload_api.errors import document_error_responses, extend_openapi, install_error_handlers
from offload_api.limits import BodySizeLimit, HeaderSizeLimit
from offload_api.rate_limit import RequestLimiter
from offload_api.routes import audit as audit_routes
from offload_api.routes import compute as compute_routes
from offload_api.routes import dead_letters, emails, health, jobs, notifications, queues
from offload_api.routes import images as image_routes
from offload_api.routes import job_types as job_type_routes
from offload_api.routes import reports as report_routes
from offload_api.routes import schedules as schedule_routes
from offload_api.trace_context import TraceContext
from offload_core.contract.api_keys import parse_api_key
from offload_core.contract.registry import load_job_types
from offload_core.otlp_metrics import start_metrics_export
from offload_core.runtime.celery_app import create_celery_app
from offload_core.settings import get_settings
from offload_core.store.dead_letters import DeadLetters
from offload_core.store.jobs import JobStore, async_redis_client
from offload_core.telemetry import API_SERVICE, setup_tracing

logger = logging.getLogger(__name__)

UNTRACED_PATHS = frozenset({"/livez", "/readyz"})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    if not settings.API_KEYS:
        logger.warning("OFFLOAD_API_KEYS is empty: /v1 is open to anyone (development only)")
    app.state.store = JobStore.from_settings(settings)
    app.state.dead_letters = DeadLetters(app.state.store.client, settings.DEAD_LETTER_TTL_SECONDS)
    app.state.celery = create_celery_app(settings, main="offload-api")  # for chains (enqueue_chain)
    # The submit path's client: jobs and audit entries are written on the event loop.
    event_loop_redis = async_redis_client(settings)
    app.state.publisher = JobPublisher(
        event_loop_redis,
        settings.JOB_TTL_SECONDS,
        settings.REDIS_SUBMIT_MEMORY_RATIO,
        max_delay_seconds=settings.DELAY_MAX_SECONDS,
    )
    app.state.audit_log = AuditLog(event_loop_redis, settings.AUDIT_MAX_ENTRIES)
    app.state.audit_log.start()
    app.state.request_limiter.start(event_loop_redis)
    queue_metrics = metrics.QueueCollector(
        app.state.store.client,
        queues=settings.QUEUES,
        stale_after=3 * settings.WORKER_HEARTBEAT_INTERVAL_SECONDS,
        cache_seconds=settings.QUEUE_METRICS_CACHE_SECONDS,
        dead_letter_ttl=settings.DEAD_LETTER_TTL_SECONDS,
    )
    metrics.REGISTRY.register(queue_metrics)
    metrics_pusher = start_metrics_export(metrics.REGISTRY, API_SERVICE)  # None without an OTLP endpoint
    metrics_server = metrics.serve_metrics(settings)
    app.state.tasks = TaskTracker(settings.API_TRACKED_TASKS_MAX)
    app.state.compute = ComputeQueue.from_settings(settings, app.state.store.client)
    app.state.compute.start()
    try:
        yield
    finally:
        # Requests have ended by now; in-process work gets its bounded time before Redis goes.
        timeout = settings.API_SHUTDOWN_TASKS_TIMEOUT_SECONDS
        await asyncio.gather(app.state.tasks.drain(timeout), app.state.compute.stop(timeout))
        await app.state.audit_log.close(timeout)
        await event_loop_redis.aclose()
        if metrics_pusher is not None:
            await asyncio.to_thread(metrics_pusher.stop)  # the last values, then the exporter closes
        metrics_server.shutdown()
        metrics_server.server_close()
        metrics.REGISTRY.unregister(queue_metrics)
        app.state.celery.pool.force_close_all()
        app.state.store.client.close()


def create_app() -> FastAPI:
    settings = get_settings()
    if problem := settings.missing_api_keys():
        raise RuntimeError(problem)
    # Declarations only: the API never imports a handler (offload_core.sdk).
    job_types = load_job_types(settings)
    app = FastAPI(
        title="Offload",
        summary="Accepts background jobs, runs them on Celery workers, reports their status.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry layer would trace and measure every request a second time
        # (TraceContext or the instrumentation below, and the Prometheus metrics, do that): off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.job_types = job_types
    install_error_handlers(app)
    extend_openapi(app, document_error_responses, document_api_key)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.API_MAX_BODY_BYTES, overrides=image_routes.body_limits(settings)
    )
    # Outside the body limit and every route: a request without a valid key is answered 401
    # from its headers, before anything reads its body.
    # Each key's request rate is checked there too, once the key is known.
    keys = [parse_api_key(key.get_secret_value()) for key in settings.API_KEYS]
    app.state.request_limiter = RequestLimiter.from_settings(settings)
    app.add_middleware(
        ApiKeyAuth,
        keys=keys,
        open_without_keys=settings.ENVIRONMENT == "development",
        limiter=app.state.request_limiter,
    )
    app.add_middleware(HeaderSizeLimit)
    app.add_middleware(AuditTrail)  # who submitted or deleted what: every accepted /v1 POST and DELETE
    # Outside the size limits, so refused requests are counted too.
    app.add_middleware(metrics.RequestMetrics)
    # Probes and scrapes would drown the traces that matter.
    if setup_tracing(API_SERVICE):
        # Without the ASGI receive/send spans: three spans a request where one says all.
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls=",".join(UNTRACED_PATHS), exclude_spans=["receive", "send"]
        )
    else:
        app.add_middleware(TraceContext, excluded_paths=UNTRACED_PATHS)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    submit_routes = APIRouter()
    job_type_routes.add_submit_routes(submit_routes, job_types)  # after /jobs/echo, which it would shadow
    app.include_router(submit_routes, prefix="/v1")
    app.include_router(job_type_routes.router, prefix="/v1")
    app.include_router(queues.router, prefix="/v1")
    app.include_router(dead_letters.router, prefix="/v1")
    app.include_router(emails.router, prefix="/v1")
    app.include_router(notifications.router, prefix="/v1")
    app.include_router(image_routes.router, prefix="/v1")
    app.include_router(audit_routes.router, prefix="/v1")
    app.include_router(schedule_routes.router, prefix="/v1")
    app.include_router(compute_routes.router, prefix="/v1")
    app.include_router(report_routes.router, prefix="/v1")
    return app
