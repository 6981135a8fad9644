"""Reports: what a client asks for (``ReportRequest``) and what the result looks like.

The API validates a ``ReportRequest``; a worker aggregates the source with its report engine
(offload_worker.report_engine) and keeps the result in the blob store (offload_core.store.report_results).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from offload_core.contract.timing import START_FIELDS, StartTime
from offload_core.contract.topology import MAX_PRIORITY, MIN_PRIORITY

if TYPE_CHECKING:
    pass

MAX_GROUP_BY = 5
MAX_METRICS = 20
MAX_FILTERS = 20
MAX_COLUMN_NAME = 200
MAX_URL_LENGTH = 2048


class SourceFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class OutputFormat(StrEnum):
    CSV = "csv"
    JSON = "json"


CONTENT_TYPES = {OutputFormat.CSV: "text/csv; charset=utf-8", OutputFormat.JSON: "application/json"}

MetricOp = Literal["count", "sum", "avg", "min", "max"]
FilterOp = Literal["=", "!=", "<", "<=", ">", ">=", "contains"]


class ReportMetric(BaseModel):
    """One output column: ``count`` (rows, or non-empty values of ``column``), or the ``sum``,
    ``avg``, ``min`` or ``max`` of a numeric column."""

    model_config = ConfigDict(extra="forbid")

    op: MetricOp
    column: str | None = Field(None, min_length=1, max_length=MAX_COLUMN_NAME, description="Required except for count.")
    name: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_COLUMN_NAME,
        description="Output column name; `<op>_<column>` (or `count`) when omitted.",
    )

    @model_validator(mode="after")
    def _column_needed(self) -> ReportMetric:
        if self.op != "count" and self.column is None:
            raise ValueError(f"{self.op} needs a column: the numeric column to aggregate")
        return self

    @property
    def output_name(self) -> str:
        if self.name is not None:
            return self.name
        return self.op if self.column is None else f"{self.op}_{self.column}"


class ReportFilter(BaseModel):
    """Keeps the rows where ``column op value`` holds. A numeric ``value`` compares numbers (a row
    whose value is not a number is malformed); a string compares text. Empty or missing values
    match no filter."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(min_length=1, max_length=MAX_COLUMN_NAME)
    op: FilterOp
    value: float | int | str = Field(union_mode="smart")

    @field_validator("value", mode="before")
    @classmethod
    def _not_boolean(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number or a string, not true/false")
        return value

    @model_validator(mode="after")
    def _contains_takes_text(self) -> ReportFilter:
        if self.op == "contains" and not isinstance(self.value, str):
            raise ValueError("contains compares text: give value as a string")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        return self


class ReportRequest(BaseModel):
    """What a report reads and computes; the task's kwargs are exactly these fields."""

    model_config = ConfigDict(extra="forbid")

    source_url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="http(s) URL of the source; it must resolve to a public address.",
    )
    source_format: SourceFormat = Field(description="`csv` (with a header row) or `jsonl` (one object a line).")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator of a CSV source.")
    group_by: list[str] = Field(
        default_factory=list, max_length=MAX_GROUP_BY, description="0 to 5 columns; none: one row over all rows."
    )
    metrics: list[ReportMetric] = Field(
        default_factory=lambda: [ReportMetric(op="count")],
        min_length=1,
        max_length=MAX_METRICS,
        description="1 to 20 metrics; a count of rows when omitted.",
    )
    filters: list[ReportFilter] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="Rows must pass every filter."
    )
    output_format: OutputFormat = OutputFormat.CSV

    @field_validator("source_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a valid URL: {exc}") from exc
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://data.example.com/sales.csv")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_columns(cls, columns: list[str]) -> list[str]:
        for column in columns:
            if not 1 <= len(column) <= MAX_COLUMN_NAME:
                raise ValueError(f"column names are 1 to {MAX_COLUMN_NAME} characters long")
        if len(set(columns)) != len(columns):
            raise ValueError("names a column twice")
        return columns

    @model_validator(mode="after")
    def _distinct_output_columns(self) -> ReportRequest:
        names = list(self.group_by)
        for metric in self.metrics:
            if metric.output_name in names:
                raise ValueError(f"output column {metric.output_name!r} appears twice; give the metric another `name`")
            names.append(metric.output_name)
        return self

    @property
    def output_columns(self) -> list[str]:
        return [*self.group_by, *(metric.output_name for metric in self.metrics)]


class ReportSubmission(ReportRequest, StartTime):
    """The body of POST /v1/reports: the report plus where it waits in line and when it starts."""

    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last; the route's default when omitted."
    )

    def task_kwargs(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude={"priority", *START_FIELDS})
