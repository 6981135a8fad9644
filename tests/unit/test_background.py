"""The tracker of in-process asyncio tasks: its bound, failures and shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from offload_api.background import TaskTracker


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
