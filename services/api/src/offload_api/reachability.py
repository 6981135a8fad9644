"""Is a webhook target reachable? Checked by the API, in a tracked task, when a notification is
submitted: a TCP connection to the address the outbound policy vets (the notifier delivers to
the same addresses), opened and closed at once, with nothing sent.

The answer is a hint shown on each target (`reachable`), an early sign of a typo or a receiver
that is down; the notifier's delivery, with its retries, decides what happens. It is checked
from the API's network, which may differ from the notifier's. The results live in their own
hash (``offload:job:<id>:reachability``), so they never race the notifier's target records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import cast

import httpx
import redis
from fastapi import Request

from offload_api.background import TaskTracker
from offload_core.contract.payloads import WebhookTarget
from offload_core.engines.outbound import DEFAULT_PORTS, OutboundPolicy, UnsafeURL
from offload_core.settings import Settings
from offload_core.store.jobs import KEY_PREFIX
from offload_core.store.notifications import TargetRecord

logger = logging.getLogger(__name__)


def reachability_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:reachability"


async def check_url(policy: OutboundPolicy, url: str, timeout: float) -> str | None:
    """None when a TCP connection to the URL's host opens within ``timeout`` seconds; otherwise why not."""
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    deadline = time.monotonic() + timeout
    try:
        # getaddrinfo blocks: in a thread, bounded (the thread itself ends with the resolver's timeout).
        addresses = await asyncio.wait_for(asyncio.to_thread(policy.vetted_addresses, host, port), timeout)
    except UnsafeURL as exc:
        return str(exc)
    except TimeoutError:
        return f"{host} did not resolve within {timeout:g}s"
    except OSError as exc:
        return f"{host} does not resolve: {exc}"
    problem = f"{host}: no address"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"{host}:{port}: no connection within {timeout:g}s"
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), remaining)
        except TimeoutError:
            problem = f"{host}:{port} ({address}): no connection within {timeout:g}s"
        except OSError as exc:
            problem = f"{host}:{port} ({address}): {exc.strerror or exc}"
        else:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)
            return None
    return problem


class Reachability:
    """Per target index: {"reachable", "error", "checked_at"} as JSON, in one hash per job."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds

    def save(self, job_id: str, index: int, problem: str | None) -> None:
        record = {"reachable": problem is None, "error": problem, "checked_at": time.time()}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(reachability_key(job_id), str(index), json.dumps(record))
        pipe.expire(reachability_key(job_id), self.ttl)
        pipe.execute()

    def merge(self, job_id: str, targets: Sequence[TargetRecord]) -> list[TargetRecord]:
        """The targets with ``reachable`` filled in where it was checked."""
        checked = cast(dict[str, str], self.client.hgetall(reachability_key(job_id)))
        merged = []
        for target in targets:
            raw = checked.get(str(target.index))
            reachable = bool(json.loads(raw)["reachable"]) if raw else None
            merged.append(target.model_copy(update={"reachable": reachable}))
        return merged


async def check_targets(
    policy: OutboundPolicy, store: Reachability, job_id: str, urls: dict[int, str], timeout: float
) -> None:
    """Check every webhook target of a notification at once and record each answer."""

    async def check_one(index: int, url: str) -> None:
        problem = await check_url(policy, url, timeout)
        await asyncio.to_thread(store.save, job_id, index, problem)
        if problem is None:
            logger.info("notification %s: webhook target %d is reachable", job_id, index)
        else:
            logger.info("notification %s: webhook target %d is not reachable: %s", job_id, index, problem)

    try:
        await asyncio.gather(*(check_one(index, url) for index, url in urls.items()))
    except redis.RedisError as exc:
        logger.warning("notification %s: reachability not recorded: %s", job_id, exc)


def start_checks(request: Request, settings: Settings, job_id: str, targets: Sequence[object]) -> bool:
    """Check the notification's webhook targets in a tracked task.
    False when the tracker refused (busy or shutting down): the targets stay unchecked."""
    urls = {index: str(target.url) for index, target in enumerate(targets) if isinstance(target, WebhookTarget)}
    if not urls:
        return True
    tracker: TaskTracker = request.app.state.tasks
    store = Reachability(request.app.state.store.client, settings.JOB_TTL_SECONDS)
    work = partial(
        check_targets,
        OutboundPolicy.from_settings(settings),
        store,
        job_id,
        urls,
        settings.WEBHOOK_CONNECT_TIMEOUT_SECONDS,
    )
    return tracker.start(f"reachability:{job_id}", work)
