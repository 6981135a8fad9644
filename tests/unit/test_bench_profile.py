"""bench.profile charges each py-spy sample to the component that made the work: libraries
everyone uses go to their caller."""

from __future__ import annotations

from pathlib import Path

from bench.profile import COMPONENTS, OTHER, component, split

ROOT = 'process 1:"python -m offload_worker";BaseProcess.run (billiard/process.py:108)'


def names(*prefixes: str) -> list[str]:
    return [next(name for name, _ in COMPONENTS if name.startswith(prefix)) for prefix in prefixes]


def test_a_redis_call_is_charged_to_its_caller() -> None:
    job_store = (
        f"{ROOT};JobStore.start (offload_core/store/jobs.py:301);Script.__call__ (redis/commands/core.py:1);"
        "_HiredisParser.read_from_socket (redis/_parsers/hiredis.py:192)"
    )
    broker = f"{ROOT};Channel._brpop_read (kombu/transport/redis.py:1);Redis.parse_response (redis/client.py:1)"
    assert [component(job_store), component(broker)] == names("Offload: job store", "kombu")


def test_the_innermost_component_wins_over_the_frames_around_it() -> None:
    stack = (
        "Server.run (uvicorn/server.py:1);ApiKeyAuth.__call__ (offload_api/auth.py:1);"
        "solve_dependencies (fastapi/dependencies/utils.py:1);current_principal (offload_api/auth.py:100)"
    )
    logged = "JobTypeTask._attempt (offload_core/runtime/job_task.py:1);Logger.info (logging/__init__.py:1)"
    assert [component(stack), component(logged)] == names("Offload: API middlewares", "logging")


def test_samples_without_a_component_fall_back_to_the_library_or_other() -> None:
    resumed = 'process 2:"python -m offload_api";Pipeline.execute (redis/asyncio/client.py:1)'
    assert component(resumed).startswith("redis-py")
    assert component('process 2:"python -m offload_api";<module> (app.py:1)') == OTHER


def test_split_adds_up_the_samples_of_each_component(tmp_path: Path) -> None:
    folded = tmp_path / "profile.folded"
    folded.write_text(
        f"{ROOT};JobStore.succeed (offload_core/store/jobs.py:1) 7\n"
        f"{ROOT};JobStore.start (offload_core/store/jobs.py:1) 5\n"
        f"{ROOT};Worker.workloop (billiard/pool.py:1) 3\n"
    )
    assert split(folded) == dict(zip(names("Offload: job store", "billiard"), [12, 3], strict=True))
