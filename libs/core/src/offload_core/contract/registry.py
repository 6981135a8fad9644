"""Which job types this deployment runs: the built-ins, installed packages' `offload.jobs` entry
points and the modules in OFFLOAD_JOB_MODULES, loaded once per process and checked at start.

A problem with a plugin (it does not import, repeats a name, names an unknown queue, its handler
cannot be found) stops the process at start with a message that names the plugin and the fix,
rather than failing its jobs one by one later.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from offload_core.sdk import JobType
from offload_core.settings import JobTypeLimits, Settings

ENTRY_POINT_GROUP = "offload.jobs"
# Offload's own jobs, declared with the same SDK; their handlers load only in workers.
BUILTIN_MODULES = ("offload_core.contract.builtin_jobs",)


class JobTypeError(RuntimeError):
    """A job plugin that cannot be used; the message says which one and what to do."""


@dataclass(frozen=True)
class Source:
    """Where job types came from, in words an operator can act on."""

    description: str  # e.g. "entry point 'acme' = acme_jobs.jobs (package acme-jobs 1.0)"
    fix: str  # where to look to change it


class JobTypes(Mapping[str, JobType[Any, Any]]):
    """The job types of this deployment by name, each with the source that declared it."""

    def __init__(self, declared: Iterable[tuple[JobType[Any, Any], Source]]) -> None:
        self._types: dict[str, JobType[Any, Any]] = {}
        self._sources: dict[str, Source] = {}
        for job_type, source in declared:
            earlier = self._types.get(job_type.name)
            if earlier is job_type:
                continue  # the same declaration reached twice (a module re-exporting another's)
            if earlier is not None:
                first = self._sources[job_type.name]
                raise JobTypeError(
                    f"job type {job_type.name!r} is declared twice: by {first.description} and by "
                    f"{source.description}. Rename one of them (names are global), or uninstall one "
                    f"of the packages ({source.fix})."
                )
            self._types[job_type.name] = job_type
            self._sources[job_type.name] = source

    def __getitem__(self, name: str) -> JobType[Any, Any]:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def override_time_limits(self, limits: Mapping[str, tuple[int, int]]) -> None:
        """Apply the (soft, hard) time limits a deployment sets for some job types by name."""
        for name, (soft, hard) in limits.items():
            if name in self._types:
                self._types[name] = replace(self._types[name], time_limit=soft, hard_time_limit=hard)

    def override_limits(self, limits: Mapping[str, JobTypeLimits]) -> None:
        """Apply the rate and concurrency limits a deployment sets (OFFLOAD_JOB_LIMITS): each field
        given replaces the declared one; a job type this deployment lacks is a typo, refused."""
        unknown = sorted(set(limits) - set(self._types))
        if unknown:
            raise JobTypeError(
                f"OFFLOAD_JOB_LIMITS names {', '.join(map(repr, unknown))}, which no job type of this "
                f"deployment is called (it has {', '.join(sorted(self._types))}); fix the name or remove the entry."
            )
        for name, override in limits.items():
            given = override.model_dump(include=override.model_fields_set)
            self._types[name] = replace(self._types[name], **given)

    def source(self, name: str) -> Source:
        return self._sources[name]

    def for_queues(self, queues: Collection[str]) -> list[JobType[Any, Any]]:
        """The job types a worker consuming these queues may receive."""
        return [t for t in self._types.values() if t.allowed_queues & set(queues)]

    def check_queues(self, known_queues: Collection[str]) -> None:
        for job_type in self._types.values():
            unknown = sorted(job_type.allowed_queues - set(known_queues))
            if unknown:
                source = self._sources[job_type.name]
                raise JobTypeError(
                    f"job type {job_type.name!r} ({source.description}) names the queue(s) {', '.join(unknown)}, "
                    f"which this deployment does not have (it has {', '.join(sorted(known_queues))}). "
                    f"Add a worker set for the queue (OFFLOAD_QUEUES, the chart's workers.sets) or change "
                    f"the job's queue."
                )

    def check_handlers(self, queues: Collection[str], settings: Settings) -> None:
        """Import every handler (and callback) a worker on these queues may run, and check that
        its time limit fits the visibility timeout; raise JobTypeError naming the first that does not."""
        longest_retry = settings.RETRY_BACKOFF_MAX_SECONDS
        for job_type in self.for_queues(queues):
            source = self._sources[job_type.name]
            loaders: dict[str, Callable[[], object]] = {
                "handler": job_type.handler,
                "on_end": job_type.on_end_callback,
                "dead_letter_payload": job_type.dead_letter_callback,
            }
            for option, load in loaders.items():
                try:
                    load()
                except Exception as exc:
                    reference = job_type.references().get(option, "")
                    raise JobTypeError(
                        f"the {option} of job type {job_type.name!r} ({reference}, declared by "
                        f"{source.description}) cannot be loaded: {type(exc).__name__}: {exc}. Install what it "
                        f"needs into this worker's image, or fix the reference ({source.fix})."
                    ) from exc
            _, hard = celery_time_limits(job_type, settings)
            if hard + longest_retry >= settings.VISIBILITY_TIMEOUT_SECONDS:
                raise JobTypeError(
                    f"job type {job_type.name!r} may run {hard} s (its hard time limit, with the wait for "
                    f"its rate or concurrency limit if it has one: OFFLOAD_JOB_LIMIT_MAX_WAIT_SECONDS), which "
                    f"with a retry backoff of up to {longest_retry:g} s does not fit "
                    f"OFFLOAD_VISIBILITY_TIMEOUT_SECONDS ({settings.VISIBILITY_TIMEOUT_SECONDS}): Redis would "
                    f"deliver it twice. Raise the visibility timeout or lower the job's time_limit."
                )


def job_types_in(target: object) -> list[JobType[Any, Any]]:
    """The job types an entry point or module names: a module's JobType attributes, one JobType,
    or an iterable of them."""
    if isinstance(target, JobType):
        return [target]
    if isinstance(target, ModuleType):
        return [value for value in vars(target).values() if isinstance(value, JobType)]
    if isinstance(target, Iterable) and not isinstance(target, str | bytes):
        found = list(target)
        if all(isinstance(item, JobType) for item in found):
            return found
    raise TypeError(f"expected a module, a JobType or a list of JobTypes, not {type(target).__name__}")


def _from_module(name: str, source: Source) -> list[tuple[JobType[Any, Any], Source]]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        raise JobTypeError(
            f"{source.description} cannot be imported: {type(exc).__name__}: {exc}. Install its "
            f"dependencies into this image, or remove it ({source.fix})."
        ) from exc
    return _declared(module, source)


def _declared(target: object, source: Source) -> list[tuple[JobType[Any, Any], Source]]:
    try:
        found = job_types_in(target)
    except TypeError as exc:
        raise JobTypeError(f"{source.description} declares no job types: {exc} ({source.fix})") from exc
    if not found:
        raise JobTypeError(
            f"{source.description} declares no job types: define them with @job from offload_core.sdk "
            f"at the module's top level ({source.fix})."
        )
    return [(job_type, source) for job_type in found]


def _from_entry_point(entry_point: importlib.metadata.EntryPoint) -> list[tuple[JobType[Any, Any], Source]]:
    package = f"{entry_point.dist.name} {entry_point.dist.version}" if entry_point.dist else "an unknown package"
    source = Source(
        f"entry point {entry_point.name!r} = {entry_point.value} of {package}",
        f"the [project.entry-points.{ENTRY_POINT_GROUP!r}] table of that package's pyproject.toml",
    )
    try:
        target = entry_point.load()
    except Exception as exc:
        raise JobTypeError(
            f"{source.description} cannot be loaded: {type(exc).__name__}: {exc}. Install its dependencies "
            f"into this image, or uninstall the package ({source.fix})."
        ) from exc
    return _declared(target, source)


def load_job_types(settings: Settings, *, known_queues: Collection[str] | None = None) -> JobTypes:
    """Every job type of this deployment; raises JobTypeError on the first unusable plugin, or on
    one naming a queue outside ``known_queues`` (the deployment's, OFFLOAD_QUEUES, by default)."""
    declared: list[tuple[JobType[Any, Any], Source]] = []
    for name in BUILTIN_MODULES:
        declared += _from_module(name, Source(f"Offload's built-in module {name}", "a bug in Offload"))
    for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        declared += _from_entry_point(entry_point)
    for name in settings.JOB_MODULES:
        declared += _from_module(name, Source(f"module {name} (OFFLOAD_JOB_MODULES)", "OFFLOAD_JOB_MODULES"))
    job_types = JobTypes(declared)
    job_types.check_queues(settings.QUEUES if known_queues is None else known_queues)
    job_types.override_time_limits(settings.job_time_limit_overrides())
    job_types.override_limits(settings.JOB_LIMITS)
    return job_types


def job_time_limits(job_type: JobType[Any, Any], settings: Settings) -> tuple[int, int]:
    """(soft, hard) seconds for one attempt: the declared limit is the soft one (the handler gets
    SoftTimeLimitExceeded and the job fails as timed out); the process is killed at the declared
    hard limit, or a tenth later (between 2 and 30 s); the settings' limits for a job that
    declares none."""
    if job_type.time_limit is None:
        soft = settings.TASK_SOFT_TIME_LIMIT_SECONDS
        return soft, max(job_type.hard_time_limit or settings.TASK_TIME_LIMIT_SECONDS, soft + 1)
    grace = min(30, max(2, job_type.time_limit // 10))
    return job_type.time_limit, job_type.hard_time_limit or job_type.time_limit + grace


def is_limited(job_type: JobType[Any, Any]) -> bool:
    """Whether the job type has a rate or concurrency limit across workers."""
    return job_type.rate_limit is not None or job_type.concurrency is not None


def celery_time_limits(job_type: JobType[Any, Any], settings: Settings) -> tuple[int, int]:
    """(soft, hard) seconds Celery gives one run of the task: its job_time_limits, longer by the
    longest wait for its limits when it has some (Celery's clock starts when the worker takes the
    message; the handler's own limit starts when it starts)."""
    soft, hard = job_time_limits(job_type, settings)
    if not is_limited(job_type):
        return soft, hard
    wait = math.ceil(settings.JOB_LIMIT_MAX_WAIT_SECONDS)
    return soft + wait, hard + wait
