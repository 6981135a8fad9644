"""All five benchmarks in sequence, then one summary table of their ratios (what `make bench`
runs). Each benchmark still prints its own table and writes bench/results/<name>.json; the
summary goes to bench/results/summary.json.

  .venv/bin/python -m bench.run_all            full runs: a few minutes on 2 cores
  .venv/bin/python -m bench.run_all --quick    a smoke run: about two minutes
  .venv/bin/python -m bench.run_all --only drain,ceiling

--log-level, --env and --no-write are passed on to every benchmark.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime

from bench import ceiling, drain, e2e, priority, submit
from bench.harness import RESULTS_DIR, Headline, add_common_args, entrypoint, fmt, machine_facts, note, print_table

ORDER = ("submit", "drain", "e2e", "priority", "ceiling")


def main(argv: list[str] | None = None) -> list[Headline]:
    parser = argparse.ArgumentParser(
        prog="bench.run_all", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ORDER)}")
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",")] if args.only else list(ORDER)
    unknown = set(chosen) - set(ORDER)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    common = ["--log-level", args.log_level]
    if args.quick:
        common.append("--quick")
    if args.no_write:
        common.append("--no-write")
    for item in args.env:
        common += ["--env", item]

    headlines: list[Headline] = []
    started = time.monotonic()
    for name in (n for n in ORDER if n in chosen):
        print(f"\n=== bench.{name} {' '.join(common)}", flush=True)
        t0 = time.monotonic()
        if name == "submit":
            headlines.append(submit.main(common))
        elif name == "drain":
            headlines.append(drain.main(common))
        elif name == "e2e":
            headlines.append(e2e.main(common))
        elif name == "priority":
            headlines.append(priority.main(common))
        elif name == "ceiling":
            drained = next((h.ours for h in headlines if h.benchmark == "drain"), None)
            extra = ["--drain-jobs-per-s", str(drained)] if drained else []
            result = ceiling.main(common + extra)
            if result is not None:
                headlines.append(result)
        note(f"bench.{name} took {time.monotonic() - t0:.0f}s")

    rows = []
    for h in headlines:
        direction = "higher is better" if h.better == "higher" else "lower is better"
        rows.append([h.benchmark, h.metric, h.ours, h.baseline_name, h.baseline, fmt(h.ratio) + f"  ({direction})"])
    print_table(
        f"Summary ({'quick smoke run, not a measurement' if args.quick else 'full run'}; "
        f"{time.monotonic() - started:.0f}s)",
        ["benchmark", "metric", "offload", "baseline", "value", "ratio offload / baseline"],
        rows,
    )
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        summary = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": bool(args.quick),
            "machine": machine_facts(),
            "headlines": [asdict(h) for h in headlines],
        }
        (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return headlines


if __name__ == "__main__":
    entrypoint(main)
