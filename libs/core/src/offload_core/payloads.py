"""Request payloads the API validates and tasks receive, shared so both agree on the shape."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from offload_core.topology import MAX_PRIORITY, MIN_PRIORITY, Queue


class EchoRequest(BaseModel):
    """The probe job: sleeps, reports progress, fails its first attempts on purpose."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=10_000, description="Returned as the job's result.")
    sleep_ms: int = Field(0, ge=0, le=60_000, description="How long the job runs, in milliseconds.")
    fail_times: int = Field(0, ge=0, le=20, description="Attempts that fail with a retryable error first.")
    queue: Queue | None = Field(None, description="Queue to run on; the task's default route when omitted.")
    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last; the route's default when omitted."
    )

    def task_kwargs(self) -> dict[str, object]:
        return {"message": self.message, "sleep_ms": self.sleep_ms, "fail_times": self.fail_times}
