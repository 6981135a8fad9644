"""The report engine on its own: sources fed in chunks that split rows and characters anywhere,
aggregates compared with a computation written out in the test, malformed rows and every limit."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from offload_core.contract.reports import ReportRequest
from offload_worker.report_engine import ReportEngine, ReportError, ReportLimits, split_lines

URL = "https://data.example.com/source"


def request(**fields: Any) -> ReportRequest:
    return ReportRequest.model_validate({"source_url": URL, "source_format": "csv", **fields})


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def run(req: ReportRequest, data: bytes, size: int = 7, **limits: Any) -> ReportEngine:
    engine = ReportEngine(req, ReportLimits(**limits))
    engine.consume(chunked(data, size))
    return engine


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


SALES = [
    # city (non-ASCII, so chunks split its UTF-8 bytes), product, qty, price
    ("Zürich", "tea", "3", "2.5"),
    ("東京", "tea", "1", "4.25"),
    ("Zürich", "coffee", "10", "3.1"),
    ("Zürich", "tea", "4", "1.05"),
    ("東京", "coffee", "", "7"),  # no qty: left out of qty's metrics, still counted as a row
    ("Oslo, Norway", "tea\nleaves", "-2", "0.3"),  # quoted: a comma and a line break inside fields
]


def sales_csv(line_end: str = "\n", bom: bool = False) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(["city", "product", "qty", "price"])
    writer.writerows(SALES)
    return ("\ufeff" if bom else "").encode() + buffer.getvalue().encode()


SALES_REPORT = request(
    group_by=["city"],
    metrics=[
        {"op": "count"},
        {"op": "count", "column": "qty", "name": "with_qty"},
        {"op": "sum", "column": "qty"},
        {"op": "avg", "column": "price"},
        {"op": "min", "column": "price"},
        {"op": "max", "column": "qty"},
    ],
)


def expected_sales() -> dict[str, dict[str, object]]:
    """The same aggregates, written out plainly."""
    expected: dict[str, dict[str, object]] = {}
    for city in dict.fromkeys(row[0] for row in SALES):
        rows = [row for row in SALES if row[0] == city]
        qty = [int(row[2]) for row in rows if row[2]]
        price = [float(row[3]) for row in rows]
        expected[city] = {
            "count": len(rows),
            "with_qty": len(qty),
            "sum_qty": sum(qty),
            "avg_price": sum(price) / len(price),
            "min_price": min(price),
            "max_qty": max(qty) if qty else None,
        }
    return expected


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 100_000])
@pytest.mark.parametrize(("line_end", "bom"), [("\n", False), ("\r\n", True)])
def test_csv_aggregates_are_exact_however_the_source_is_chunked(size: int, line_end: str, bom: bool) -> None:
    engine = run(SALES_REPORT, sales_csv(line_end, bom), size)

    rows = csv_rows(engine.render())
    assert [row["city"] for row in rows] == sorted(expected_sales())
    for row in rows:
        want = expected_sales()[row["city"]]
        assert int(row["count"]) == want["count"]
        assert int(row["with_qty"]) == want["with_qty"]
        assert int(row["sum_qty"]) == want["sum_qty"]
        assert float(row["avg_price"]) == want["avg_price"]
        assert float(row["min_price"]) == want["min_price"]
        assert (int(row["max_qty"]) if row["max_qty"] else None) == want["max_qty"]
    assert (engine.rows_read, engine.rows_matched, engine.rows_malformed) == (6, 6, 0)


def test_json_output_keeps_numbers_as_numbers_and_empty_as_null() -> None:
    report = SALES_REPORT.model_copy(update={"output_format": "json"})
    engine = run(report, sales_csv())

    document = json.loads(engine.render())
    assert document["columns"] == ["city", "count", "with_qty", "sum_qty", "avg_price", "min_price", "max_qty"]
    by_city = {row.pop("city"): row for row in document["rows"]}
    assert by_city == expected_sales()


def test_no_group_by_gives_one_row_even_over_no_rows() -> None:
    metrics = [{"op": "count"}, {"op": "sum", "column": "qty"}, {"op": "min", "column": "price"}]
    everything = run(request(metrics=metrics), sales_csv())
    assert csv_rows(everything.render()) == [{"count": "6", "sum_qty": "16", "min_price": "0.3"}]

    nothing = run(request(metrics=metrics, filters=[{"column": "qty", "op": ">", "value": 1000}]), sales_csv())
    assert csv_rows(nothing.render()) == [{"count": "0", "sum_qty": "", "min_price": ""}]


@pytest.mark.parametrize(
    ("op", "value", "cities"),
    [
        ("=", "Zürich", {"Zürich": 3}),
        ("!=", "Zürich", {"東京": 2, "Oslo, Norway": 1}),
        ("contains", "slo", {"Oslo, Norway": 1}),
        ("<", "Z", {"Oslo, Norway": 1}),  # text compares as text
    ],
)
def test_text_filters(op: str, value: str, cities: dict[str, int]) -> None:
    engine = run(request(group_by=["city"], filters=[{"column": "city", "op": op, "value": value}]), sales_csv())
    assert {row["city"]: int(row["count"]) for row in csv_rows(engine.render())} == cities


@pytest.mark.parametrize(
    ("op", "value", "quantities"),
    [
        ("=", 3, ["3"]),
        (">", 3, ["10", "4"]),
        (">=", 3, ["3", "10", "4"]),
        ("<", 3, ["1", "-2"]),
        ("<=", 1.0, ["1", "-2"]),
        ("!=", 10, ["3", "1", "4", "-2"]),  # the empty qty matches no filter, not even !=
    ],
)
def test_numeric_filters_compare_numbers(op: str, value: float, quantities: list[str]) -> None:
    report = request(group_by=["qty"], filters=[{"column": "qty", "op": op, "value": value}])
    engine = run(report, sales_csv())
    assert sorted(row["qty"] for row in csv_rows(engine.render())) == sorted(quantities)


def test_filters_all_apply() -> None:
    filters = [{"column": "product", "op": "=", "value": "tea"}, {"column": "price", "op": ">", "value": 2}]
    engine = run(request(group_by=["city"], filters=filters), sales_csv())
    assert {row["city"]: row["count"] for row in csv_rows(engine.render())} == {"Zürich": "1", "東京": "1"}
    assert (engine.rows_read, engine.rows_matched) == (6, 2)


def test_jsonl_keeps_json_types_apart_and_skips_nulls() -> None:
    lines = [
        {"k": 1, "v": 10},
        {"k": 1.0, "v": 1.5},
        {"k": "1", "v": "2"},  # a number in a string is a number for a metric
        {"k": True, "v": None},
        {"k": None, "v": 4},
        {"v": 5},  # k missing: the same group as null
        {"k": 1, "v": -3, "extra": [1, 2]},
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    report = request(
        source_format="jsonl",
        group_by=["k"],
        metrics=[{"op": "count"}, {"op": "sum", "column": "v"}, {"op": "count", "column": "v", "name": "values"}],
        output_format="json",
    )
    engine = run(report, data, size=3)

    rows = json.loads(engine.render())["rows"]
    assert rows == [
        {"k": 1, "count": 2, "sum_v": 7, "values": 2},
        {"k": 1.0, "count": 1, "sum_v": 1.5, "values": 1},
        {"k": "1", "count": 1, "sum_v": 2, "values": 1},
        {"k": True, "count": 1, "sum_v": None, "values": 0},
        {"k": None, "count": 2, "sum_v": 9, "values": 2},
    ]


def test_jsonl_warns_about_a_column_no_row_has() -> None:
    engine = run(request(source_format="jsonl", group_by=["regoin"]), b'{"region": "north"}\n{"region": "south"}\n')
    assert engine.summary()["warnings"] == ["column 'regoin' appears in no row of the source"]


def test_malformed_rows_are_counted_with_their_line_and_left_out() -> None:
    data = (
        b"city,qty\n"
        b"a,1\n"
        b"a,2,extra\n"  # line 3: too many fields
        b"b,x\n"  # line 4: not a number where sum needs one
        b'b,"3\n'  # line 5: a quote never closed swallows the rest
    )
    report = request(group_by=["city"], metrics=[{"op": "sum", "column": "qty"}])
    engine = run(report, data, max_malformed_share=1.0)

    assert csv_rows(engine.render()) == [{"city": "a", "sum_qty": "1"}]
    summary = engine.summary()
    assert (summary["rows_read"], summary["rows_matched"], summary["rows_malformed"]) == (4, 1, 3)
    problems = {m["line"]: m["problem"] for m in summary["malformed_examples"]}  # type: ignore[attr-defined]
    assert problems[3] == "3 fields where the header has 2"
    assert problems[4] == "column 'qty': 'x' is not a number"
    assert "not valid CSV" in problems[5]


def test_malformed_jsonl_lines() -> None:
    data = b'{"v": 1}\nnot json\n[1, 2]\n\n{"v": {"deep": 1}}\n{"v": true}\n'
    engine = run(request(source_format="jsonl", metrics=[{"op": "sum", "column": "v"}]), data, max_malformed_share=1.0)
    problems = {m.line: m.problem for m in engine.malformed_examples}
    assert set(problems) == {2, 3, 5, 6}
    assert problems[2].startswith("not valid JSON")
    assert problems[3] == "a JSON list, not an object"
    assert "is not a number" in problems[5]
    assert "is not a number" in problems[6]


def test_a_malformed_share_above_the_limit_fails_once_the_sample_is_large_enough() -> None:
    lines = ["n"] + [("oops,extra" if i % 10 == 0 else str(i)) for i in range(5000)]
    data = "\n".join(lines).encode()
    report = request(metrics=[{"op": "sum", "column": "n"}])
    engine = ReportEngine(report, ReportLimits(max_malformed_share=0.05, malformed_min_rows=1000))
    with pytest.raises(ReportError, match=r"malformed \(10\.\d%\), above the 5\.0% allowed") as caught:
        engine.consume(chunked(data, 4096))
    assert "so far" in str(caught.value)
    assert "line 2: 2 fields where the header has 1" in str(caught.value)
    assert 1000 <= engine.rows_read < 2000  # stopped early, not at the end

    # Under the share: counted, reported, not fatal.
    tolerant = run(report, data, size=4096, max_malformed_share=0.2)
    assert tolerant.rows_malformed == 500
    assert csv_rows(tolerant.render()) == [{"sum_n": str(sum(i for i in range(5000) if i % 10))}]


def test_the_share_is_judged_at_the_end_for_a_source_below_the_sample() -> None:
    with pytest.raises(ReportError, match=r"1 of 3 rows are malformed"):
        run(request(), b"a\n1\n2\n3,4\n", max_malformed_share=0.1)


def test_row_limit() -> None:
    data = ("n\n" + "1\n" * 11).encode()
    assert run(request(), data, max_rows=11).rows_read == 11
    with pytest.raises(ReportError, match=r"more than 10 rows.*OFFLOAD_REPORT_MAX_ROWS"):
        run(request(), data, max_rows=10)


def test_group_limit() -> None:
    data = ("n\n" + "".join(f"{i}\n" for i in range(6))).encode()
    assert run(request(group_by=["n"]), data, max_groups=6).groups == 6
    with pytest.raises(ReportError, match=r"more than 5 groups.*OFFLOAD_REPORT_MAX_GROUPS"):
        run(request(group_by=["n"]), data, max_groups=5)


def test_result_size_limit() -> None:
    data = ("n\n" + "".join(f"{'x' * 90}{i}\n" for i in range(100))).encode()
    with pytest.raises(ReportError, match=r"larger than 2,048 bytes.*OFFLOAD_REPORT_MAX_RESULT_BYTES"):
        run(request(group_by=["n"]), data, max_result_bytes=2048)
    # Groups whose keys fit the limit but whose rendered result does not still fail at the end.
    engine = run(
        request(group_by=["n"], metrics=[{"op": "count", "name": f"c{i}"} for i in range(10)]),
        data,
        max_result_bytes=10_500,
    )
    with pytest.raises(ReportError, match=r"larger than 10,500 bytes"):
        engine.render()


def test_the_result_budget_is_checked_as_groups_grow_not_at_the_end() -> None:
    chunks_read = 0

    def source() -> Iterator[bytes]:
        nonlocal chunks_read
        yield b"n\n"
        for i in range(10_000):  # 10,000 groups of 500 bytes: about 5 MB of keys
            chunks_read += 1
            yield f"{'x' * 500}{i}\n".encode()

    engine = ReportEngine(request(group_by=["n"]), ReportLimits(max_result_bytes=64 * 1024))
    with pytest.raises(ReportError, match=r"larger than 65,536 bytes"):
        engine.consume(source())
    assert chunks_read < 200  # stopped once the keys alone exceeded the result limit
    assert engine.groups < 200


def test_a_group_key_over_the_byte_cap_is_a_malformed_row() -> None:
    data = ("city,n\n" + "Paris,1\n" + f"{'é' * 300},2\n" + "Lyon,3\n").encode()
    engine = run(request(group_by=["city"]), data, max_group_key_bytes=512, max_malformed_share=1.0)
    assert engine.groups == 2
    assert engine.rows_malformed == 1
    assert "more than 512 bytes (OFFLOAD_REPORT_MAX_GROUP_KEY_BYTES)" in engine.malformed_examples[0].problem
    # 300 characters, 600 bytes in UTF-8: judged by bytes, not characters.
    assert run(request(group_by=["city"]), data, max_group_key_bytes=600).rows_malformed == 0


def test_a_source_without_line_breaks_is_refused_not_buffered() -> None:
    with pytest.raises(ReportError, match=r"longer than 1,000 characters"):
        run(request(), b"n\n" + b"1" * 5000, size=100, max_line_chars=1000)


def test_split_lines_keeps_only_newline_as_the_line_end() -> None:
    assert list(split_lines(["a\r", "\nb\u2028c", "\n", "d"])) == ["a\r\n", "b\u2028c\n", "d"]


def test_header_problems_are_clear() -> None:
    with pytest.raises(ReportError, match=r"no column 'region'; its header names 'city', 'product', 'qty'"):
        run(request(group_by=["region"]), sales_csv())
    with pytest.raises(ReportError, match="the source is empty"):
        run(request(), b"")
    with pytest.raises(ReportError, match="names column 'a' more than once"):
        run(request(group_by=["a"]), b"a,a\n1,2\n")


@pytest.mark.parametrize("size", [1, 3, 100])
def test_text_that_is_not_utf8_is_refused_saying_where(size: int) -> None:
    with pytest.raises(ReportError, match=r"not UTF-8 text \(invalid continuation byte at byte offset 4\)"):
        run(request(), "n\nok\xe4\n".encode("latin-1"), size=size)


def test_other_delimiters() -> None:
    engine = run(request(csv_delimiter=";", group_by=["a"]), b"a;b\nx;1\nx;2\n")
    assert csv_rows(engine.render()) == [{"a": "x", "count": "2"}]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metrics": [{"op": "sum"}]}, "sum needs a column"),
        ({"group_by": ["a", "a"]}, "names a column twice"),
        ({"group_by": list("abcdef")}, "at most 5 items"),
        ({"group_by": ["count"]}, "output column 'count' appears twice"),
        ({"filters": [{"column": "a", "op": "contains", "value": 3}]}, "contains compares text"),
        ({"filters": [{"column": "a", "op": "=", "value": True}]}, "not true/false"),
        ({"filters": [{"column": "a", "op": "~", "value": "x"}]}, "Input should be"),
        ({"source_url": "ftp://data.example.com/a.csv"}, "must be an http:// or https:// URL"),
        ({"source_format": "xml"}, "Input should be 'csv' or 'jsonl'"),
        ({"csv_delimiter": "::"}, "at most 1 character"),
    ],
)
def test_invalid_requests_say_what_to_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        request(**fields)
