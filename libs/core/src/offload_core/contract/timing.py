"""When a submitted job may start: the fields every submit body carries beside its payload."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, Field

START_FIELDS = frozenset({"run_at", "delay_seconds"})


class StartTime(BaseModel):
    """Now when neither is given; otherwise the job is `scheduled` until due, then queued."""

    run_at: AwareDatetime | None = Field(
        None,
        description="Start at this time (RFC 3339 with a time zone, e.g. 2026-01-31T12:00:00Z); "
        "a time already past starts it now. Not together with delay_seconds.",
    )
    delay_seconds: float | None = Field(
        None, ge=0, description="Start this many seconds from now. Not together with run_at."
    )
