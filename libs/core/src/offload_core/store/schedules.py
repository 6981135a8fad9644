"""Recurring schedules: a job type and payload fired on a cron expression (in an IANA time zone)
or a fixed interval, each tick a normal job carrying the schedule's id.

A schedule is a Redis hash; the non-paused ones wait in a sorted set scored by their next fire
time. The timekeepers of every worker (offload_core.runtime.timekeeper) take the due ones; each
tick is fired by one script (lua/fire_schedule.lua) that checks the stored next fire time is still
the tick it read, moves it on and accepts the tick's job, atomically, with a job id derived from
(schedule, tick). So however many loops run, and whichever restart, a tick makes one job.

A tick later than the misfire grace (the loops were all down) is a misfire: every tick up to now
is then handled by the schedule's policy, `skip` (none of them runs) or `run_once` (one job, as
the first of them), and the next fire time is the first tick after now.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis
from cronsim import CronSim
from kombu.utils import json as kombu_json
from pydantic import BaseModel

from offload_core.runtime.task_message import queue_list, task_message
from offload_core.store.jobs import (
    INDEX_KEY,
    WAITING_KEY,
    HashValue,
    job_key,
    kwargs_key,
    owner_index_key,
    queued_record,
    type_index_key,
)
from offload_core.store.lua_scripts import lua
from offload_core.store.queue_state import ENQUEUED_AT_HEADER

KEY_PREFIX = "offload:schedule:"
# Every schedule by creation time (listing), and the non-paused ones by next fire time.
INDEX = "offload:schedules:index"
DUE_KEY = "offload:schedules:due"
SHOWN_FIRE_TIMES = 3


class MisfirePolicy(StrEnum):
    SKIP = "skip"  # ticks missed while no loop ran never run
    RUN_ONCE = "run_once"  # one job stands for all of them


class Timing:
    """When a schedule's ticks fall: every ``interval_seconds`` from an anchor, or on a cron
    expression in a time zone."""

    def __init__(self, *, cron: str | None, timezone: str, interval_seconds: float | None, anchor: float) -> None:
        self.cron = cron
        self.zone = ZoneInfo(timezone)
        self.interval = interval_seconds
        self.anchor = anchor
        if cron is not None:
            # CronSimError for a bad expression, StopIteration for one that never fires.
            next(CronSim(cron, datetime.now(self.zone)))

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment``."""
        if self.interval is not None:
            steps = max(0, int((moment - self.anchor) // self.interval) + 1)
            tick = self.anchor + steps * self.interval
            return tick if tick > moment else tick + self.interval
        assert self.cron is not None
        return next(CronSim(self.cron, datetime.fromtimestamp(moment, self.zone))).timestamp()

    def upcoming(self, first: float, count: int) -> list[float]:
        ticks = [first]
        while len(ticks) < count:
            ticks.append(self.next_after(ticks[-1]))
        return ticks


class Schedule(BaseModel):
    id: str
    job_type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    cron: str | None = None
    timezone: str = "UTC"
    interval_seconds: float | None = None
    misfire: MisfirePolicy
    paused: bool
    owner: str | None = None
    created_at: datetime
    updated_at: datetime
    next_fire_times: list[datetime]  # the next few ticks; empty while paused
    last_fired_at: datetime | None = None
    last_job_id: str | None = None
    fires: int = 0


def schedule_key(schedule_id: str) -> str:
    return KEY_PREFIX + schedule_id


def tick_job_id(schedule_id: str, tick: float) -> str:
    """The id of the job a tick makes: the same in every loop, so a tick cannot make two."""
    return f"{schedule_id}-{round(tick * 1000)}"


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


@dataclass(frozen=True)
class FireOutcome:
    schedule_id: str
    job_id: str | None  # None when the tick was skipped
    tick: float
    misfire: bool


class ScheduleStore:
    def __init__(self, client: redis.Redis, job_ttl_seconds: int, *, misfire_grace_seconds: float = 5.0) -> None:
        self.client = client
        self.job_ttl = job_ttl_seconds
        self.misfire_grace = misfire_grace_seconds
        self._fire = client.register_script(lua("fire_schedule"))

    # --- API side -------------------------------------------------------------------

    def create(
        self,
        *,
        job_type: str,
        payload: Mapping[str, Any],
        queue: str,
        priority: int,
        cron: str | None,
        timezone: str,
        interval_seconds: float | None,
        misfire: MisfirePolicy,
        paused: bool,
        owner: str | None,
        schedule_id: str | None = None,
    ) -> Schedule:
        """A new schedule; ``schedule_id`` is chosen beforehand when an idempotency claim names it."""
        now = time.time()
        schedule_id = schedule_id or uuid.uuid4().hex
        timing = Timing(cron=cron, timezone=timezone, interval_seconds=interval_seconds, anchor=now)
        next_fire = timing.next_after(now)
        fields: dict[str, HashValue] = {
            "id": schedule_id,
            "job_type": job_type,
            "payload": json.dumps(dict(payload)),
            "queue": queue,
            "priority": priority,
            "timezone": timezone,
            "misfire": misfire,
            "paused": int(paused),
            "owner": owner or "",
            "anchor": repr(now),
            "next_fire": repr(next_fire),
            "created_at": now,
            "updated_at": now,
            "fires": 0,
        }
        if cron is not None:
            fields["cron"] = cron
        if interval_seconds is not None:
            fields["interval_seconds"] = repr(float(interval_seconds))
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(schedule_key(schedule_id), mapping=cast(Mapping[Any, Any], fields))
        pipe.zadd(INDEX, {schedule_id: now})
        if not paused:
            pipe.zadd(DUE_KEY, {schedule_id: next_fire})
        pipe.execute()
        found = self.get(schedule_id)
        assert found is not None
        return found

    def get(self, schedule_id: str) -> Schedule | None:
        fields = cast(dict[str, str], self.client.hgetall(schedule_key(schedule_id)))
        return self._decode(fields) if fields else None

    def all(self) -> list[Schedule]:
        """Every schedule, newest first (entries whose hash is gone are dropped)."""
        ids = [str(i) for i in cast(list[str], self.client.zrevrange(INDEX, 0, -1))]
        pipe = self.client.pipeline(transaction=False)
        for schedule_id in ids:
            pipe.hgetall(schedule_key(schedule_id))
        found = []
        for schedule_id, fields in zip(ids, pipe.execute() if ids else [], strict=True):
            if fields:
                found.append(self._decode(fields))
            else:
                self.client.zrem(INDEX, schedule_id)
        return found

    def update(
        self,
        schedule_id: str,
        *,
        paused: bool | None = None,
        misfire: MisfirePolicy | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Schedule | None:
        """Pause (no tick fires; it leaves the due set) or resume (the next tick after now: the
        paused time is not a misfire); change the misfire policy or the payload of later ticks."""
        key = schedule_key(schedule_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    fields = cast(dict[str, str], pipe.hgetall(key))
                    if not fields:
                        return None
                    now = time.time()
                    changes: dict[str, HashValue] = {"updated_at": now}
                    if misfire is not None:
                        changes["misfire"] = misfire
                    if payload is not None:
                        changes["payload"] = json.dumps(dict(payload))
                    pipe.multi()
                    if paused is True and fields.get("paused") != "1":
                        changes["paused"] = 1
                        pipe.zrem(DUE_KEY, schedule_id)
                    elif paused is False and fields.get("paused") == "1":
                        next_fire = self._timing(fields).next_after(now)
                        changes.update(paused=0, next_fire=repr(next_fire))
                        pipe.zadd(DUE_KEY, {schedule_id: next_fire})
                    pipe.hset(key, mapping=cast(Mapping[Any, Any], changes))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # a tick fired meanwhile: read it again
        return self.get(schedule_id)

    def delete(self, schedule_id: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(schedule_key(schedule_id))
        pipe.zrem(DUE_KEY, schedule_id)
        pipe.zrem(INDEX, schedule_id)
        return bool(pipe.execute()[0])

    # --- the loops ------------------------------------------------------------------

    def fire_due(self, *, most: int, origin: str) -> tuple[list[FireOutcome], float | None]:
        """Fire the ticks due now (by Redis's clock), up to ``most`` schedules; what was fired
        and when the next schedule is due."""
        seconds, micros = self.client.time()
        now = seconds + micros / 1_000_000
        due = cast(list[str], self.client.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=most))
        outcomes = []
        for schedule_id in due:
            outcome = self._fire_one(str(schedule_id), now, origin)
            if outcome is not None:
                outcomes.append(outcome)
        following = cast(list[tuple[str, float]], self.client.zrange(DUE_KEY, 0, 0, withscores=True))
        return outcomes, (following[0][1] if following else None)

    def _fire_one(self, schedule_id: str, now: float, origin: str) -> FireOutcome | None:
        fields = cast(dict[str, str], self.client.hgetall(schedule_key(schedule_id)))
        if not fields or fields.get("paused") == "1" or "next_fire" not in fields:
            self.client.zrem(DUE_KEY, schedule_id)  # deleted or paused meanwhile
            return None
        stored_tick = fields["next_fire"]
        tick = float(stored_tick)
        if tick > now:
            return None
        timing = self._timing(fields)
        misfire = now - tick > self.misfire_grace
        if misfire:
            # Every tick up to now was missed: one job at most (as the first of them), then on
            # from the next tick after now.
            next_fire = timing.next_after(now)
            run = fields.get("misfire") == MisfirePolicy.RUN_ONCE
        else:
            next_fire = timing.next_after(tick)
            run = True
        job_id = tick_job_id(schedule_id, tick) if run else ""
        keys, args = self._fire_call(fields, stored_tick, next_fire, now, job_id, tick, origin)
        if not self._fire(keys=keys, args=args):
            return None  # another loop fired it, or it was paused or deleted meanwhile
        return FireOutcome(schedule_id, job_id or None, tick, misfire)

    def _fire_call(
        self,
        fields: dict[str, str],
        stored_tick: str,
        next_fire: float,
        now: float,
        job_id: str,
        tick: float,
        origin: str,
    ) -> tuple[list[str], list[HashValue]]:
        schedule_id, task, queue = fields["id"], fields["job_type"], fields["queue"]
        priority = int(fields["priority"])
        owner = fields.get("owner") or None
        kwargs = json.loads(fields["payload"])
        keys = [
            schedule_key(schedule_id),
            DUE_KEY,
            job_key(job_id or "-"),
            kwargs_key(job_id or "-"),
            WAITING_KEY,
            queue_list(queue, priority),
            INDEX_KEY,
            type_index_key(task),
            owner_index_key(owner),
        ]
        args: list[HashValue] = [schedule_id, stored_tick, repr(next_fire), now, self.job_ttl, job_id]
        if not job_id:
            return keys, args
        message = task_message(
            task, job_id, kwargs, queue=queue, priority=priority, headers={ENQUEUED_AT_HEADER: now}, origin=origin
        )
        record = queued_record(job_id, task, queue, now, priority=priority, owner=owner)
        record.update(schedule_id=schedule_id, scheduled_for=tick)
        args += [kombu_json.dumps(kwargs), message]
        return keys, [*args, *itertools.chain.from_iterable(record.items())]

    # --- decoding -------------------------------------------------------------------

    @staticmethod
    def _timing(fields: dict[str, str]) -> Timing:
        interval = fields.get("interval_seconds")
        return Timing(
            cron=fields.get("cron"),
            timezone=fields.get("timezone", "UTC"),
            interval_seconds=float(interval) if interval else None,
            anchor=float(fields["anchor"]),
        )

    def _decode(self, fields: dict[str, str]) -> Schedule:
        paused = fields.get("paused") == "1"
        upcoming = [] if paused else self._timing(fields).upcoming(float(fields["next_fire"]), SHOWN_FIRE_TIMES)
        interval = fields.get("interval_seconds")
        created = _ts(fields.get("created_at")) or datetime.now(UTC)
        return Schedule(
            id=fields["id"],
            job_type=fields["job_type"],
            payload=json.loads(fields["payload"]),
            queue=fields["queue"],
            priority=int(fields["priority"]),
            cron=fields.get("cron"),
            timezone=fields.get("timezone", "UTC"),
            interval_seconds=float(interval) if interval else None,
            misfire=MisfirePolicy(fields.get("misfire", MisfirePolicy.SKIP)),
            paused=paused,
            owner=fields.get("owner") or None,
            created_at=created,
            updated_at=_ts(fields.get("updated_at")) or created,
            next_fire_times=[datetime.fromtimestamp(t, UTC) for t in upcoming],
            last_fired_at=_ts(fields.get("last_fired_at")),
            last_job_id=fields.get("last_job_id"),
            fires=int(fields.get("fires", 0)),
        )
