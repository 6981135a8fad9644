"""The report engine: a CSV or JSON Lines source aggregated as it streams in.

The worker feeds the source's bytes, chunk by chunk, to a ``ReportEngine``, which decodes, splits
and parses them incrementally and folds every row into its group at once. Memory grows with the
number of groups (bounded), never with the number of rows. Malformed rows are counted and skipped
up to a share of the rows read; every other limit fails the report with a ``ReportError`` saying
which limit and what to change. It lives in the worker alone: the API image never carries it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload_core.settings import Settings

from offload_core.contract.reports import (
    OutputFormat,
    ReportRequest,
    SourceFormat,
)

# A line (or CSV field) longer than this is not a data row; stop rather than buffer it.
MAX_LINE_CHARS = 1024 * 1024
# Malformed rows quoted in the result and in errors, so the user can find them in the source.
MALFORMED_EXAMPLES = 5


@dataclass(frozen=True)
class ReportLimits:
    max_rows: int = 20_000_000
    max_groups: int = 100_000
    max_result_bytes: int = 10 * 1024 * 1024
    max_group_key_bytes: int = 1024
    max_malformed_share: float = 0.01
    malformed_min_rows: int = 1000
    max_line_chars: int = MAX_LINE_CHARS

    @classmethod
    def from_settings(cls, settings: Settings) -> ReportLimits:
        return cls(
            max_rows=settings.REPORT_MAX_ROWS,
            max_groups=settings.REPORT_MAX_GROUPS,
            max_result_bytes=settings.REPORT_MAX_RESULT_BYTES,
            max_group_key_bytes=settings.REPORT_MAX_GROUP_KEY_BYTES,
            max_malformed_share=settings.REPORT_MAX_MALFORMED_SHARE,
            malformed_min_rows=settings.REPORT_MALFORMED_MIN_ROWS,
        )


class ReportError(Exception):
    """The report cannot be produced; the message says why and what to change."""


class _Malformed(Exception):
    """This row cannot be used; the message says why."""


@dataclass
class MalformedRow:
    line: int
    problem: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "problem": self.problem}


# --- streaming text ---------------------------------------------------------------------


def decode_utf8(chunks: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 text from byte chunks that may split a character anywhere; a BOM is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    start = 0  # offset in the source of the bytes the decoder is given (its held-back ones first)
    try:
        for chunk in chunks:
            held_back = len(decoder.getstate()[0])
            start -= held_back
            text = decoder.decode(chunk)
            start += held_back + len(chunk)
            if text:
                yield text
        start -= len(decoder.getstate()[0])
        if tail := decoder.decode(b"", final=True):
            yield tail
    except UnicodeDecodeError as exc:
        raise ReportError(
            f"the source is not UTF-8 text ({exc.reason} at byte offset {start + exc.start:,}); "
            "convert it to UTF-8 or serve it as such"
        ) from exc


def split_lines(texts: Iterable[str], max_line_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """Whole lines, each with its "\\n", from text chunks that may split a line anywhere. Only "\\n"
    ends a line (a "\\r" before it stays, for the CSV reader); a line longer than max_line_chars
    is an error, so a source without line breaks cannot fill the memory."""
    pending = ""
    for text in texts:
        pending += text
        if "\n" in text:
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line + "\n"
        if len(pending) > max_line_chars:
            raise ReportError(
                f"a line of the source is longer than {max_line_chars:,} characters; "
                "is it really CSV or JSON Lines with one record a line?"
            )
    if pending:
        yield pending


# --- aggregation ------------------------------------------------------------------------

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "contains": operator.contains,
}
Number = int | float


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _number(value: object, column: str) -> Number:
    """The number in a cell or JSON value; _Malformed if it holds none."""
    if isinstance(value, str):
        if value.isdecimal() or (value[0] in "+-" and value[1:].isdecimal()):
            return int(value)
        try:
            number: Number = float(value)
        except ValueError:
            raise _Malformed(f"column {column!r}: {_short(value)} is not a number") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    else:
        raise _Malformed(f"column {column!r}: {_short(value)} is not a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise _Malformed(f"column {column!r}: {_short(value)} is not a finite number")
    return number


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _group_part(value: object, column: str) -> object:
    """A hashable group value that keeps JSON types apart (1, 1.0, "1" and true are four groups)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return (type(value).__name__, value)
    raise _Malformed(f"column {column!r}: group values must be text, numbers or booleans, not {_short(value)}")


def _output_value(part: object) -> object:
    return part[1] if isinstance(part, tuple) else part


def _sort_key(key: tuple[object, ...]) -> tuple[tuple[int, float, str], ...]:
    """Orders groups by value: numbers, then text, then booleans, then empty."""
    ranked: list[tuple[int, float, str]] = []
    for part in key:
        value = _output_value(part)
        if value is None:
            ranked.append((3, 0.0, ""))
        elif isinstance(value, bool):
            ranked.append((2, float(value), ""))
        elif isinstance(value, int | float):
            ranked.append((0, float(value), ""))
        else:
            ranked.append((1, 0.0, str(value)))
    return tuple(ranked)


# What a metric does to its group's accumulators, as small ints for the row loop.
_COUNT_ROWS, _COUNT_VALUES, _SUM, _MIN, _MAX = range(5)
_KINDS = {"count": _COUNT_VALUES, "sum": _SUM, "avg": _SUM, "min": _MIN, "max": _MAX}


@dataclass
class _Plan:
    """The request compiled for the row loop: values are looked up by their position in the list
    of referenced columns, and each metric owns two accumulator slots of its group: the count of
    values it took, and their sum, minimum or maximum."""

    columns: list[str]
    # (position, column name)
    groups: Sequence[tuple[int, str]]
    # (position, comparison, value, whether it compares numbers, column name)
    filters: Sequence[tuple[int, Callable[[Any, Any], bool], object, bool, str]]
    # Columns the metrics read as numbers, each parsed once per row: (position, column name).
    numeric: Sequence[tuple[int, str]]
    # (kind, position of its column, first of its two slots); position 0 for a count of rows.
    updates: Sequence[tuple[int, int, int]]
    # (op, column name or "") of each metric, in output order.
    metrics: Sequence[tuple[str, str]]

    @classmethod
    def compile(cls, request: ReportRequest) -> _Plan:
        columns: list[str] = []

        def position(column: str) -> int:
            if column not in columns:
                columns.append(column)
            return columns.index(column)

        groups = [(position(column), column) for column in request.group_by]
        filters = [
            (position(f.column), _COMPARE[f.op], f.value, not isinstance(f.value, str), f.column)
            for f in request.filters
        ]
        numeric: dict[int, str] = {}
        updates = []
        for index, metric in enumerate(request.metrics):
            if metric.column is None:
                updates.append((_COUNT_ROWS, 0, 2 * index))
                continue
            at = position(metric.column)
            if metric.op != "count":
                numeric[at] = metric.column
            updates.append((_KINDS[metric.op], at, 2 * index))
        metrics = [(metric.op, metric.column or "") for metric in request.metrics]
        return cls(columns, groups, filters, list(numeric.items()), updates, metrics)

    def new_accumulators(self) -> list[Any]:
        accumulators: list[Any] = []
        for kind, _, _ in self.updates:
            accumulators += [0, 0 if kind == _SUM else None]
        return accumulators


@dataclass
class ReportEngine:
    """Aggregates one source. ``consume(chunks)`` reads it to the end (or raises ReportError);
    ``render()`` gives the result. The counters are safe to read while ``consume`` runs."""

    request: ReportRequest
    limits: ReportLimits = field(default_factory=ReportLimits)
    rows_read: int = 0
    rows_matched: int = 0
    rows_malformed: int = 0
    malformed_examples: list[MalformedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._plan = _Plan.compile(self.request)
        # Per group: per metric [values counted, sum/min/max]. Memory is this dict alone.
        self._groups: dict[tuple[object, ...], list[Any]] = {}
        # The least the result can take: every group's key and a separator per column. It grows
        # with each new group, so a result bound to exceed the limit fails while its groups are
        # gathered, not after they filled memory.
        self._result_floor = 0

    @property
    def groups(self) -> int:
        return len(self._groups)

    def consume(self, chunks: Iterable[bytes]) -> None:
        lines = split_lines(decode_utf8(chunks), self.limits.max_line_chars)
        if self.request.source_format is SourceFormat.CSV:
            self._consume_csv(lines)
        else:
            self._consume_jsonl(lines)
        self._check_malformed_share(final=True)

    # --- parsing ---

    def _consume_csv(self, lines: Iterator[str]) -> None:
        reader = csv.reader(lines, delimiter=self.request.csv_delimiter, strict=True)
        header = self._csv_header(reader)
        if header is None:
            raise ReportError("the source is empty: a CSV source starts with a header row naming its columns")
        index = {}
        for column in self._plan.columns:
            if header.count(column) > 1:
                raise ReportError(f"the source's header names column {column!r} more than once")
            if column not in header:
                shown = ", ".join(repr(name) for name in header[:50]) + (", ..." if len(header) > 50 else "")
                raise ReportError(f"the source has no column {column!r}; its header names {shown}")
            index[column] = header.index(column)
        positions = [index[column] for column in self._plan.columns]
        width = len(header)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.rows_read += 1
                self._malformed(reader.line_num, f"not valid CSV: {exc}")
                continue
            if not row:
                continue  # a blank line
            self.rows_read += 1
            if len(row) != width:
                self._malformed(reader.line_num, f"{len(row)} fields where the header has {width}")
                continue
            try:
                self._add([row[i] or None for i in positions])
            except _Malformed as exc:
                self._malformed(reader.line_num, str(exc))

    def _csv_header(self, reader: Iterator[list[str]]) -> list[str] | None:
        for row in reader:
            if row:
                return row
        return None

    def _consume_jsonl(self, lines: Iterator[str]) -> None:
        columns = self._plan.columns
        unseen = set(columns)
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            self.rows_read += 1
            try:
                record = json.loads(line)
            except ValueError as exc:
                self._malformed(line_number, f"not valid JSON: {exc}")
                continue
            if not isinstance(record, dict):
                self._malformed(line_number, f"a JSON {type(record).__name__}, not an object")
                continue
            if unseen:
                unseen.difference_update(record.keys())
            try:
                self._add([record.get(column) for column in columns])
            except _Malformed as exc:
                self._malformed(line_number, str(exc))
        for column in columns:
            if column in unseen and self.rows_read:
                self.warnings.append(f"column {column!r} appears in no row of the source")

    # --- one row ---

    def _add(self, values: list[Any]) -> None:
        """Fold one row (its referenced columns' values, None when empty) into its group."""
        if self.rows_read > self.limits.max_rows:
            raise ReportError(
                f"the source has more than {self.limits.max_rows:,} rows, the limit "
                "(OFFLOAD_REPORT_MAX_ROWS); filter it at the source or split it"
            )
        plan = self._plan
        for filter_at, compare, target, numeric, column in plan.filters:
            value = values[filter_at]
            if value is None:
                return
            if numeric:
                if not compare(_number(value, column), target):
                    return
            elif not compare(_text(value), target):
                return
        # Every number first, so a malformed row changes no group.
        numbers = values.copy()
        for at, column in plan.numeric:
            if (value := values[at]) is not None:
                numbers[at] = _number(value, column)
        if self.request.source_format is SourceFormat.JSONL:
            key = tuple(_group_part(values[at], column) for at, column in plan.groups)
        else:
            key = tuple(values[at] for at, _ in plan.groups)
        accumulators = self._groups.get(key)
        if accumulators is None:
            if len(self._groups) >= self.limits.max_groups:
                raise ReportError(
                    f"the report has more than {self.limits.max_groups:,} groups, the limit "
                    "(OFFLOAD_REPORT_MAX_GROUPS); group by fewer or coarser columns, or add filters"
                )
            self._result_floor += self._key_bytes(key) + len(self._plan.metrics) + len(key)
            if self._result_floor > self.limits.max_result_bytes:
                self._too_large(self.limits.max_result_bytes)
            accumulators = self._groups[key] = plan.new_accumulators()
        self.rows_matched += 1
        for kind, at, slot in plan.updates:
            if kind == _COUNT_ROWS:
                accumulators[slot] += 1
                continue
            number = numbers[at]
            if number is None:
                continue  # an empty value is left out, as SQL leaves out NULL
            accumulators[slot] += 1
            if kind == _SUM:
                accumulators[slot + 1] += number
            elif kind == _MIN:
                current = accumulators[slot + 1]
                if current is None or number < current:
                    accumulators[slot + 1] = number
            elif kind == _MAX:
                current = accumulators[slot + 1]
                if current is None or number > current:
                    accumulators[slot + 1] = number

    def _key_bytes(self, key: tuple[object, ...]) -> int:
        """The UTF-8 size of a new group's values; a row whose values exceed the cap is malformed."""
        limit = self.limits.max_group_key_bytes
        size = 0
        for part in key:
            if isinstance(part, str):
                # Characters first: a UTF-8 character takes 1 to 4 bytes.
                size += len(part) if len(part) * 4 <= limit else len(part.encode())
            elif part is not None:
                size += len(str(part))
            if size > limit:
                raise _Malformed(
                    f"its group_by values take more than {limit:,} bytes (OFFLOAD_REPORT_MAX_GROUP_KEY_BYTES)"
                )
        return size

    def _malformed(self, line: int, problem: str) -> None:
        self.rows_malformed += 1
        if len(self.malformed_examples) < MALFORMED_EXAMPLES:
            self.malformed_examples.append(MalformedRow(line, problem))
        self._check_malformed_share(final=False)

    def _check_malformed_share(self, *, final: bool) -> None:
        if not self.rows_malformed or (not final and self.rows_read < self.limits.malformed_min_rows):
            return
        share = self.rows_malformed / self.rows_read
        if share > self.limits.max_malformed_share:
            examples = "; ".join(f"line {m.line}: {m.problem}" for m in self.malformed_examples)
            so_far = "" if final else " so far"
            raise ReportError(
                f"{self.rows_malformed:,} of {self.rows_read:,} rows{so_far} are malformed ({share:.1%}), above "
                f"the {self.limits.max_malformed_share:.1%} allowed (OFFLOAD_REPORT_MAX_MALFORMED_SHARE); "
                f"first problems: {examples}"
            )

    # --- output ---

    def _rows(self) -> list[list[object]]:
        """The result rows, sorted by group, as output values."""
        groups = self._groups
        if not groups and not self.request.group_by:
            groups = {(): self._plan.new_accumulators()}  # one row over no rows, as SQL gives
        rows = []
        for key in sorted(groups, key=_sort_key):
            accumulators = groups[key]
            row: list[object] = [_output_value(part) for part in key]
            for index, (op, column) in enumerate(self._plan.metrics):
                count, value = accumulators[2 * index], accumulators[2 * index + 1]
                if op == "count":
                    value = count
                elif count == 0:
                    value = None  # no values to sum or compare
                elif op == "avg":
                    value = value / count
                if isinstance(value, float) and not math.isfinite(value):
                    raise ReportError(f"the {op} of column {column!r} is beyond the range of a float")
                row.append(value)
            rows.append(row)
        return rows

    def render(self) -> bytes:
        """The result in the requested format; ReportError when it exceeds the result size limit."""
        columns = self.request.output_columns
        rows = self._rows()
        limit = self.limits.max_result_bytes
        if self.request.output_format is OutputFormat.CSV:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(columns)
            for number, row in enumerate(rows):
                writer.writerow(["" if value is None else _csv_cell(value) for value in row])
                if number % 1000 == 0 and buffer.tell() > limit:  # characters <= bytes: a safe early stop
                    self._too_large(limit)
            body = buffer.getvalue().encode()
        else:
            document = {"columns": columns, "rows": [dict(zip(columns, row, strict=True)) for row in rows]}
            body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > limit:
            self._too_large(limit)
        return body

    def _too_large(self, limit: int) -> None:
        raise ReportError(
            f"the result ({len(self._groups):,} groups) is larger than {limit:,} bytes, the limit "
            "(OFFLOAD_REPORT_MAX_RESULT_BYTES); group by fewer columns or add filters"
        )

    def summary(self) -> dict[str, object]:
        return {
            "rows_read": self.rows_read,
            "rows_matched": self.rows_matched,
            "rows_malformed": self.rows_malformed,
            "malformed_examples": [m.as_dict() for m in self.malformed_examples],
            "groups": len(self._groups),
            "warnings": list(self.warnings),
        }


def _csv_cell(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
