"""The statistics of POST /v1/compute, on their own."""

from __future__ import annotations

import statistics

import pytest

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
