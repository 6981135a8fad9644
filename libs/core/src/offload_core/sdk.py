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
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from pydantic import BaseModel

from offload_core.job_errors import JobCancelled, PermanentJobError, TransientJobError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "JobCancelled",
    "JobContext",
    "JobType",
    "PermanentJobError",
    "TransientJobError",
    "job",
]

RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT")

Handler = Callable[["JobContext", RequestT], ResultT | Awaitable[ResultT]]

# Lower-case dotted names, e.g. "acme.resize": they appear in URLs, metrics and logs.
JOB_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$")
QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MIN_PRIORITY, MAX_PRIORITY = 0, 9


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
    description: str = ""
    handler_ref: str | None = None  # "module:function" when the handler lives apart from the declaration
    handler_function: Handler[RequestT, ResultT] | None = field(default=None, repr=False, compare=False)
    module: str = ""  # where it was declared, for error messages

    @property
    def allowed_queues(self) -> frozenset[str]:
        return self.queues or frozenset({self.queue})

    def handler(self) -> Handler[RequestT, ResultT]:
        """The function that runs the job; imports its module when declared by reference."""
        if self.handler_function is not None:
            return self.handler_function
        assert self.handler_ref is not None
        module_name, _, attribute = self.handler_ref.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        if isinstance(target, JobType):
            target = target.handler()
        if not callable(target):
            raise TypeError(f"{self.handler_ref} is not a function")
        return target  # type: ignore[no-any-return]

    def run(self, ctx: JobContext, payload: RequestT) -> Any:
        """Run the handler; a coroutine handler runs to completion on a loop of its own."""
        outcome = self.handler()(ctx, payload)
        if inspect.isawaitable(outcome):
            outcome = asyncio.run(_awaited(outcome))
        return outcome


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


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
    time_limit: int | None = ...,
    description: str = ...,
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
    time_limit: int | None = ...,
    description: str = ...,
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
    time_limit: int | None = None,
    description: str = "",
) -> Callable[[Handler[RequestT, Any]], JobType[RequestT, Any]]:
    """Declare the decorated function as the handler of job type ``name``.

    ``request`` validates the submitted payload (the handler gets an instance); ``result``, if
    given, validates and documents what the handler returns. ``queue`` is the default queue,
    ``queues`` every queue a request may choose; ``priority`` 0 runs first, 9 last. Any exception
    but PermanentJobError and JobCancelled is retried with backoff up to ``max_retries`` times;
    ``time_limit`` bounds one attempt in seconds. The docstring becomes the API's description."""

    def declare(handler: Handler[RequestT, Any]) -> JobType[RequestT, Any]:
        return declare_job(
            name,
            request=request,
            result=result,
            queue=queue,
            queues=queues,
            priority=priority,
            max_retries=max_retries,
            time_limit=time_limit,
            description=description or inspect.getdoc(handler) or "",
            handler=handler,
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
    time_limit: int | None = None,
    description: str = "",
    handler: Handler[RequestT, ResultT] | str,
    module: str = "",
) -> JobType[RequestT, ResultT]:
    """A declaration whose handler may live in another module (``handler="pkg.mod:function"``),
    so that the API, which reads declarations only, never imports the handler's dependencies."""
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
    if max_retries is not None and not 0 <= max_retries <= 100:
        problems.append(f"max_retries must be between 0 and 100, not {max_retries}")
    if time_limit is not None and time_limit < 1:
        problems.append(f"time_limit must be at least 1 second, not {time_limit}")
    if isinstance(handler, str) and ":" not in handler:
        problems.append(f"handler={handler!r} must name a function as 'package.module:function'")
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
        description=description,
        handler_ref=handler if isinstance(handler, str) else None,
        handler_function=None if isinstance(handler, str) else handler,
        module=module or (handler.partition(":")[0] if isinstance(handler, str) else ""),
    )
