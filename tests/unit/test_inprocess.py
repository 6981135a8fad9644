"""The in-process pieces on their own: the statistics, the task tracker's bounds and shutdown,
and what the audit trail reads from an answer."""

from __future__ import annotations

import asyncio
import logging
import statistics

import pytest

from offload_api.audit import CapturedResponse
from offload_api.background import TaskTracker
from offload_api.compute import percentile, summarize


def test_percentiles_interpolate_between_ranks() -> None:
    ordered = [10.0, 20.0, 30.0, 40.0]
    assert [percentile(ordered, p) for p in (0, 100, 50, 25)] == [10.0, 40.0, 25.0, 17.5]
    assert percentile([7.0], 99.9) == 7.0
    # Values at the float limit do not overflow on the way.
    assert percentile([-1.7e308, 1.7e308], 50) == 0.0


def test_summary_of_numbers() -> None:
    result = summarize([3, 1, 2, 2], [50, 50, 75])
    assert result == {
        "count": 4,
        "mean": 2.0,
        "median": 2.0,
        "stdev": statistics.stdev([1, 2, 2, 3]),
        "min": 1,
        "max": 3,
        "percentiles": {"50": 2.0, "75": 2.25},  # repeats asked once
    }


def test_numbers_too_large_for_a_float_summary_say_so() -> None:
    with pytest.raises(ValueError, match="too large to summarize as floats"):
        summarize([-1.7e308, 1.7e308, 1.7e308], [50])


def test_a_job_id_is_read_from_a_job_answer_only() -> None:
    def captured(body: bytes, *, json_body: bool = True, complete: bool = True) -> CapturedResponse:
        return CapturedResponse(status=202, json_body=json_body, body=bytearray(body), body_complete=complete)

    assert captured(b'{"id": "abc", "task": "offload.echo"}').job_id() == "abc"
    assert captured(b'{"id": "abc"}').job_id() is None  # e.g. an uploaded file's id, not a job
    assert captured(b'{"id": "abc", "task": "x"}', complete=False).job_id() is None
    assert captured(b'{"id": "abc", "task": "x"}', json_body=False).job_id() is None
    assert captured(b"not json").job_id() is None


def test_the_tracker_bounds_running_tasks_and_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        tracker = TaskTracker(limit=2)
        release = asyncio.Event()

        async def wait() -> None:
            await release.wait()

        async def fail() -> None:
            raise RuntimeError("boom")

        assert tracker.start("first", wait)
        assert tracker.start("second", wait)
        assert not tracker.start("third", wait)  # at the limit: refused, nothing created
        assert tracker.running() == ["first", "second"]
        release.set()
        await asyncio.sleep(0.01)
        assert tracker.running() == []
        assert tracker.start("failing", fail)
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.WARNING, logger="offload_api.background"):
        asyncio.run(scenario())
    assert "tracked task third not started: 2 already running" in caplog.text
    assert "tracked task failing failed" in caplog.text
    assert "boom" in caplog.text


def test_drain_waits_then_cancels_and_names_what_is_left(caplog: pytest.LogCaptureFixture) -> None:
    finished: list[str] = []

    async def scenario() -> list[str]:
        tracker = TaskTracker(limit=10)

        def sleeper(name: str, seconds: float) -> None:
            async def work() -> None:
                await asyncio.sleep(seconds)
                finished.append(name)

            tracker.start(name, work)

        sleeper("quick", 0.05)
        sleeper("slow", 30)
        cancelled = await tracker.drain(timeout=0.5)
        sleeper("late", 0)  # closing: refused, never runs
        return cancelled

    with caplog.at_level(logging.INFO, logger="offload_api.background"):
        assert asyncio.run(scenario()) == ["slow"]
    assert finished == ["quick"]
    assert "cancelled 1 tracked tasks still running after 0.5s: slow" in caplog.text
    assert "tracked task late not started: the API is shutting down" in caplog.text
