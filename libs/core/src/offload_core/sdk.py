"""The job SDK: everything a package needs to declare its own Offload jobs, in one module.

A job type is one decorated function::

    from pydantic import BaseModel
    from offload_core.sdk import JobContext, job

    class ResizeRequest(BaseModel):
        url: str
        width: int

    class ResizeResult(BaseModel):
        bytes: int

    @job("acme.resize", queue="low", request=ResizeRequest, result=ResizeResult, max_retries=5, time_limit=300)
    def resize(ctx: JobContext, req: ResizeRequest) -> ResizeResult:
        ctx.progress(10, "fetching")
        ...

The package announces the module through the ``offload.jobs`` entry point group (or the
``OFFLOAD_JOB_MODULES`` setting); the API then offers ``POST /v1/jobs/acme.resize`` and a
worker consuming ``low`` runs the handler.

The API imports job modules too, to learn the declarations, and never calls a handler: keep a
job module's top-level imports light and import heavy libraries inside the handler, or declare
the job with ``handler="package.module:function"`` so only workers import that module.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import BaseModel

from offload_core.contract.job_errors import JobCancelled, JobTimeLimitExceeded, PermanentJobError, TransientJobError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobEnd",
    "JobTimeLimitExceeded",
    "JobType",
    "PermanentJobError",
    "TransientJobError",
    "declare_job",
    "job",
]

RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT")

Handler = Callable[["JobContext", RequestT], ResultT | Awaitable[ResultT]]
# Called once a job has ended; see JobEnd and the on_end= option of @job.
OnEnd = Callable[["JobEnd", RequestT], object]
# What a replay of a failed job submits; see the dead_letter_payload= option of @job.
DeadLetterPayload = Callable[["JobEnd", RequestT], RequestT]

# Lower-case dotted names, e.g. "acme.resize": they appear in URLs, metrics and logs.
JOB_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$")
QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MIN_PRIORITY, MAX_PRIORITY = 0, 9
# A bound against typos; a job whose retries its own records bound (a fan-out) may need many.
MAX_RETRIES_LIMIT = 10_000
# Bounds of a job type's own limits (OFFLOAD_JOB_LIMITS has the same).
MAX_RATE_LIMIT = 100_000.0
MAX_CONCURRENCY = 100_000


class JobContext:
    """What a running handler may use: who it is, how to report, when to stop, how to reach out.

    The worker makes one per attempt; handlers never construct it."""

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        queue: str,
        attempt: int,
        max_retries: int,
        worker: str,
        deadline: float | None,
        report_progress: Callable[[int, str], None],
        cancel_requested: Callable[[], bool],
        http_client: Callable[[], httpx.Client],
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.queue = queue
        self.attempt = attempt  # 1 on the first run, 2 on the first retry...
        self.max_retries = max_retries
        self.worker = worker  # the Celery node running this attempt
        self._deadline = deadline
        self._report_progress = report_progress
        self._cancel_requested = cancel_requested
        self._http_client = http_client
        # Lines logged through it (or any logger inside the job) carry job_id, task and queue.
        self.logger = logging.getLogger(f"offload.jobs.{job_type}")

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt > self.max_retries

    @property
    def deadline(self) -> float | None:
        """When the soft time limit stops this attempt, as a ``time.monotonic()`` value."""
        return self._deadline

    def seconds_left(self) -> float | None:
        """Seconds until the soft time limit, or None without one."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) and a short message; GET /v1/jobs/{id} and its events show it."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be between 0 and 100, not {percent}")
        self._report_progress(percent, message)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if DELETE /v1/jobs/{id} asked this job to stop; call it between units
        of work, so a cancelled job stops at the next call."""
        if self._cancel_requested():
            raise JobCancelled(self.job_id)

    @cached_property
    def http(self) -> httpx.Client:
        """An HTTP client that refuses private addresses (unless OFFLOAD_OUTBOUND_ALLOWED_HOSTS
        allows them), follows no redirects and has bounded timeouts. Closed after the attempt."""
        return self._http_client()

    def close(self) -> None:
        if "http" in self.__dict__:
            self.http.close()


@dataclass(frozen=True)
class JobEnd:
    """How a job ended, as the on_end and dead_letter_payload callbacks see it."""

    job_id: str
    job_type: str
    queue: str
    status: Literal["succeeded", "failed", "cancelled"]
    error: str | None = None  # why it failed or was cancelled, as GET /v1/jobs/{id} shows it


@dataclass(frozen=True)
class JobType(Generic[RequestT, ResultT]):
    """One declared job type. Made by ``@job``; its fields are what GET /v1/job-types shows."""

    name: str
    queue: str  # where a job goes when the request names no queue
    request: type[RequestT]
    result: type[ResultT] | None = None
    queues: frozenset[str] = frozenset()  # where a request may send it; {queue} unless given
    priority: int = 3  # default priority inside the queue (0 first .. 9 last)
    max_retries: int | None = None  # transient failures retried this often; OFFLOAD_TASK_MAX_RETRIES if None
    time_limit: int | None = None  # seconds an attempt may run; OFFLOAD_TASK_*_TIME_LIMIT_SECONDS if None
    # Seconds after which the attempt's process is killed; time_limit plus a grace period if None.
    hard_time_limit: int | None = None
    retry_backoff: bool = True  # False: retry after exactly the delay a TransientJobError asks for
    # Across all workers: at most rate_limit starts a second, at most concurrency running at once.
    rate_limit: float | None = None
    concurrency: int | None = None
    description: str = ""
    handler_ref: str | None = None  # "module:function" when the handler lives apart from the declaration
    handler_function: Handler[RequestT, ResultT] | None = field(default=None, repr=False, compare=False)
    on_end: OnEnd[RequestT] | str | None = field(default=None, repr=False, compare=False)
    dead_letter_payload: DeadLetterPayload[RequestT] | str | None = field(default=None, repr=False, compare=False)
    module: str = ""  # where it was declared, for error messages

    @property
    def allowed_queues(self) -> frozenset[str]:
        return self.queues or frozenset({self.queue})

    def handler(self) -> Handler[RequestT, ResultT]:
        """The function that runs the job; imports its module when declared by reference."""
        if self.handler_function is not None:
            return self.handler_function
        assert self.handler_ref is not None
        target = resolve(self.handler_ref)
        if isinstance(target, JobType):
            target = target.handler()
        return _callable(target, self.handler_ref)  # type: ignore[no-any-return]

    def on_end_callback(self) -> OnEnd[RequestT] | None:
        """The on_end callback; imports its module when declared by reference."""
        if isinstance(self.on_end, str):
            return _callable(resolve(self.on_end), self.on_end)  # type: ignore[no-any-return]
        return self.on_end

    def dead_letter_callback(self) -> DeadLetterPayload[RequestT] | None:
        """The dead_letter_payload callback; imports its module when declared by reference."""
        if isinstance(self.dead_letter_payload, str):
            return _callable(resolve(self.dead_letter_payload), self.dead_letter_payload)  # type: ignore[no-any-return]
        return self.dead_letter_payload

    def references(self) -> dict[str, str]:
        """The option names whose functions are declared by "package.module:function" reference."""
        options = {"handler": self.handler_ref, "on_end": self.on_end, "dead_letter_payload": self.dead_letter_payload}
        return {option: value for option, value in options.items() if isinstance(value, str)}

    def run(self, ctx: JobContext, payload: RequestT) -> Any:
        """Run the handler; a coroutine handler runs to completion on a loop of its own."""
        outcome = self.handler()(ctx, payload)
        if inspect.isawaitable(outcome):
            outcome = asyncio.run(_awaited(outcome))
        return outcome


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def resolve(reference: str) -> Any:
    """What a "package.module:attribute" reference names, importing its module now."""
    module_name, _, attribute = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _callable(target: object, reference: str) -> Any:
    if not callable(target):
        raise TypeError(f"{reference} is not a function but a {type(target).__name__}")
    return target


@overload
def job(
    name: str,
    *,
    request: type[RequestT],
    result: type[ResultT],
    queue: str = ...,
    queues: tuple[str, ...] | None = ...,
    priority: int = ...,
    max_retries: int | None = ...,
    retry_backoff: bool = ...,
    time_limit: int | None = ...,
    hard_time_limit: int | None = ...,
    rate_limit: float | None = ...,
    concurrency: int | None = ...,
    description: str = ...,
    on_end: OnEnd[RequestT] | str | None = ...,
    dead_letter_payload: DeadLetterPayload[RequestT] | str | None = ...,
) -> Callable[[Handler[RequestT, ResultT]], JobType[RequestT, ResultT]]: ...


@overload
def job(
    name: str,
    *,
    request: type[RequestT],
    result: None = ...,
    queue: str = ...,
    queues: tuple[str, ...] | None = ...,
    priority: int = ...,
    max_retries: int | None = ...,
    retry_backoff: bool = ...,
    time_limit: int | None = ...,
    hard_time_limit: int | None = ...,
    rate_limit: float | None = ...,
    concurrency: int | None = ...,
    description: str = ...,
    on_end: OnEnd[RequestT] | str | None = ...,
    dead_letter_payload: DeadLetterPayload[RequestT] | str | None = ...,
) -> Callable[[Handler[RequestT, Any]], JobType[RequestT, Any]]: ...


def job(
    name: str,
    *,
    request: type[RequestT],
    result: type[ResultT] | None = None,
    queue: str = "default",
    queues: tuple[str, ...] | None = None,
    priority: int = 3,
    max_retries: int | None = None,
    retry_backoff: bool = True,
    time_limit: int | None = None,
    hard_time_limit: int | None = None,
    rate_limit: float | None = None,
    concurrency: int | None = None,
    description: str = "",
    on_end: OnEnd[RequestT] | str | None = None,
    dead_letter_payload: DeadLetterPayload[RequestT] | str | None = None,
) -> Callable[[Handler[RequestT, Any]], JobType[RequestT, Any]]:
    """Declare the decorated function as the handler of job type ``name``.

    ``request`` validates the submitted payload (the handler gets an instance); ``result``, if
    given, validates and documents what the handler returns. ``queue`` is the default queue,
    ``queues`` every queue a request may choose; ``priority`` 0 runs first, 9 last.

    Retries: any exception but PermanentJobError and JobCancelled is retried up to
    ``max_retries`` times (OFFLOAD_TASK_MAX_RETRIES if None), after an exponential backoff with
    jitter, or after the TransientJobError's ``retry_after`` if that is longer. With
    ``retry_backoff=False`` the delay is exactly ``retry_after`` (at once without one): for a
    handler that keeps its own schedule. Every delay is capped by OFFLOAD_RETRY_BACKOFF_MAX_SECONDS.

    Limits: ``time_limit`` bounds one attempt in seconds (JobTimeLimitExceeded is raised in the
    handler, and the job fails); ``hard_time_limit`` is when its process is killed, by default a
    little later.

    Limits across all workers of the deployment (unlike Celery's per-worker ``rate_limit``):
    ``rate_limit`` starts a second at most (no second holds more), ``concurrency`` jobs running
    at once at most; e.g. for a partner API that allows 10 calls a second. A job over a limit
    waits in the worker that took it (without polling, keeping its place) until it may start;
    OFFLOAD_JOB_LIMITS overrides both per job type.

    Callbacks, each a function or a "package.module:function" reference (so that the API, which
    reads declarations only, never imports what they need). They run in the worker, get a JobEnd
    and the job's request, and must be quick and idempotent: ``on_end(end, request)`` runs once
    the job has ended, however it ended (succeeded, failed, cancelled, also when it was cancelled
    before it ran), at least once; ``dead_letter_payload(end, request)`` returns the request a
    replay of the failed job should submit (by default the one it was given). An exception in a
    callback is logged and changes nothing else. The docstring becomes the API's description."""

    def declare(handler: Handler[RequestT, Any]) -> JobType[RequestT, Any]:
        return declare_job(
            name,
            request=request,
            result=result,
            queue=queue,
            queues=queues,
            priority=priority,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            time_limit=time_limit,
            hard_time_limit=hard_time_limit,
            rate_limit=rate_limit,
            concurrency=concurrency,
            description=description or inspect.getdoc(handler) or "",
            handler=handler,
            on_end=on_end,
            dead_letter_payload=dead_letter_payload,
            module=getattr(handler, "__module__", ""),
        )

    return declare


def declare_job(
    name: str,
    *,
    request: type[RequestT],
    result: type[ResultT] | None = None,
    queue: str = "default",
    queues: tuple[str, ...] | None = None,
    priority: int = 3,
    max_retries: int | None = None,
    retry_backoff: bool = True,
    time_limit: int | None = None,
    hard_time_limit: int | None = None,
    rate_limit: float | None = None,
    concurrency: int | None = None,
    description: str = "",
    handler: Handler[RequestT, ResultT] | str,
    on_end: OnEnd[RequestT] | str | None = None,
    dead_letter_payload: DeadLetterPayload[RequestT] | str | None = None,
    module: str = "",
) -> JobType[RequestT, ResultT]:
    """A declaration whose handler may live in another module (``handler="pkg.mod:function"``),
    so that the API, which reads declarations only, never imports the handler's dependencies.
    The options are those of ``@job``."""
    problems = []
    if not JOB_NAME.match(name):
        problems.append("its name must be lower-case and dotted, like 'acme.resize'")
    # Checked at run time too: plugins need not be type-checked.
    request_class: object = request
    if not (isinstance(request_class, type) and issubclass(request_class, BaseModel)):
        problems.append("request= must be a pydantic model class")
    allowed = tuple(queues) if queues else (queue,)
    for candidate in (queue, *allowed):
        if not QUEUE_NAME.match(candidate):
            problems.append(f"queue {candidate!r} is not a valid queue name (lower-case letters, digits, - and _)")
    if queue not in allowed:
        problems.append(f"its queue {queue!r} must be one of queues={allowed}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        problems.append(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {priority}")
    if max_retries is not None and not 0 <= max_retries <= MAX_RETRIES_LIMIT:
        problems.append(f"max_retries must be between 0 and {MAX_RETRIES_LIMIT}, not {max_retries}")
    if time_limit is not None and time_limit < 1:
        problems.append(f"time_limit must be at least 1 second, not {time_limit}")
    if hard_time_limit is not None and hard_time_limit <= (time_limit or 0):
        problems.append(f"hard_time_limit must be longer than time_limit ({time_limit or 0} s), not {hard_time_limit}")
    if rate_limit is not None and not 0 < rate_limit <= MAX_RATE_LIMIT:
        problems.append(f"rate_limit must be above 0 and at most {MAX_RATE_LIMIT} starts a second, not {rate_limit}")
    if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
        problems.append(f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}")
    functions: dict[str, object] = {"handler": handler, "on_end": on_end, "dead_letter_payload": dead_letter_payload}
    for option, value in functions.items():
        if isinstance(value, str) and ":" not in value:
            problems.append(f"{option}={value!r} must name a function as 'package.module:function'")
        elif value is not None and not isinstance(value, str) and not callable(value):
            problems.append(f"{option}= must be a function or a 'package.module:function' reference")
    if problems:
        raise ValueError(f"job {name!r} is not valid: " + "; ".join(problems))
    return JobType(
        name=name,
        queue=queue,
        request=request,
        result=result,
        queues=frozenset(allowed),
        priority=priority,
        max_retries=max_retries,
        time_limit=time_limit,
        hard_time_limit=hard_time_limit,
        rate_limit=rate_limit,
        concurrency=concurrency,
        retry_backoff=retry_backoff,
        description=description,
        handler_ref=handler if isinstance(handler, str) else None,
        handler_function=None if isinstance(handler, str) else handler,
        on_end=on_end,
        dead_letter_payload=dead_letter_payload,
        module=module or (handler.partition(":")[0] if isinstance(handler, str) else ""),
    )
