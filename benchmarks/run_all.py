"""`make bench`: run every benchmark, print one table and write benchmarks/RESULTS.md.

Each benchmark module exposes ``run(quick: bool) -> list[dict]`` of rows made by ``common.row``: ``what``,
``measure``, ``value`` (text), ``target`` and ``ok`` (True, False, or None where a figure is only
reported), and for rates a numeric ``throughput``. Figures are ratios against a reference measured in the
same run wherever a target is a speed, because the machines are shared and absolute times drift.
Throughputs are also compared with the previous full run on the same CPU model (``benchmarks/last_run.json``
keeps one baseline per model name from /proc/cpuinfo, each figure divided by a one-thread matrix-multiply
reference measured in the same run); rows marked ``gate`` (training throughput) fail when they drop by
more than 10%. On a CPU without a baseline the rows say "no baseline for this CPU": a different machine's
figures would turn a hardware difference into a regression.
bench_gpu runs only where CUDA is available.

`make bench` (this script) must finish within ``BUDGET_S`` (5 minutes) on the project's 2-vCPU machine;
its last row says whether it did, with the wall time per module and the load. A module whose ``run``
takes a keyword ``full`` keeps its long rows (the largest sizes, the slow baselines) for `make bench-full`
(``--full``), which writes ``RESULTS-full.md`` and has no time budget; `make bench` writes ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch

from ncdetect.sysinfo import cpu_model, describe_machine

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Threads, format_rows, load_average  # noqa: E402
from common import row as result_row  # noqa: E402

MODULES = [
    "bench_data", "bench_models", "bench_sampling", "bench_scoring", "bench_serve", "bench_whisper",
    "bench_gpu",
]
REGRESSION_TOLERANCE = 0.10
BUDGET_S = 300  # `make bench` must fit in 5 minutes on any of the machines' CPUs


def reference_gflops(windows: int = 10, seconds: float = 0.1) -> float:
    """One-thread float32 matrix-multiply throughput, the best of short windows: the yardstick that
    throughput figures are divided by (most benchmarks time one thread too)."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best = 0.0
    with Threads(1):
        for _ in range(windows):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                a @ b
                n += 1
            best = max(best, 2 * 512**3 * n / (time.perf_counter() - start) / 1e9)
    return best


def check_regressions(rows: list[dict], gflops: float, last_path: Path, cpu: str | None = None) -> None:
    """Compare throughputs (rows with ``throughput``) with the previous run on the same CPU model, per
    GFLOP/s, and store this run as that model's baseline. Every change is shown; a drop of more than 10%
    fails the rows marked ``gate`` (training throughput, whose target is exactly that). The other rates
    move with the load of a shared machine and are only shown. Without a baseline for ``cpu`` (default:
    this machine's model name) the rows say so and the gates report instead of judging."""
    cpu = cpu_model() if cpu is None else cpu
    baselines = json.loads(last_path.read_text()) if last_path.is_file() else {}
    if not all(isinstance(v, dict) for v in baselines.values()):
        baselines = {}  # the old layout, one unnamed machine's figures: a baseline for no CPU
    previous = baselines.get(cpu, {})
    current: dict[str, float] = {}
    for row in rows:
        if "throughput" not in row:
            continue
        key = f"{row['what']} / {row['measure']}"
        current[key] = row["throughput"] / gflops
        if key in previous:
            change = current[key] / previous[key] - 1
            row["vs_last_run"] = f"{change:+.0%} vs last run"
            if row.get("gate"):
                row["ok"] = change >= -REGRESSION_TOLERANCE
        elif not previous:
            row["vs_last_run"] = "no baseline for this CPU"
    # Merged, so that the rows of `make bench-full` and of `make bench` keep each other's baselines.
    baselines[cpu] = {**previous, **current}
    last_path.write_text(json.dumps(baselines, indent=2, sort_keys=True) + "\n")


def run_module(name: str, quick: bool, full: bool) -> list[dict]:
    """One module's rows; ``full`` goes to the modules whose ``run`` takes it."""
    run = importlib.import_module(name).run
    if "full" in inspect.signature(run).parameters:
        return run(quick=quick, full=full)
    return run(quick=quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--only", nargs="*", default=MODULES, help="benchmark modules to run")
    parser.add_argument("--full", action="store_true",
                        help="the long rows too (make bench-full; no time budget, writes RESULTS-full.md)")
    args = parser.parse_args()

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    gflops = reference_gflops()
    rows: list[dict] = []
    for name in args.only:
        elapsed = time.perf_counter() - started
        print(f"running {name} ... ({elapsed:.0f} s so far)", file=sys.stderr, flush=True)
        rows += run_module(name, quick=args.quick, full=args.full)
        seconds[name] = time.perf_counter() - started - elapsed
    # The machine may have got busier or quieter meanwhile: the better of the two is its speed.
    gflops = max(gflops, reference_gflops())
    if not args.quick and args.only == MODULES:
        check_regressions(rows, gflops, HERE / "last_run.json")
        total = time.perf_counter() - started
        per_module = ", ".join(f"{n.removeprefix('bench_')} {t:.0f} s" for n, t in seconds.items())
        measure = f"wall time ({per_module}; {load_average()})"
        if args.full:
            rows.append(result_row("make bench-full, all modules", measure, f"{total:.0f} s"))
        else:
            rows.append(result_row("make bench, all modules", measure, f"{total:.0f} s", f"<= {BUDGET_S} s",
                                   total <= BUDGET_S))

    lines = [
        "# Benchmark results",
        "",
        f"Machine: {describe_machine()}.",
        f"Reference: {gflops:.1f} GFLOP/s float32 matmul on one thread, measured in the same run.",
        f"Load average (1 min) {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, "
        f"on {os.cpu_count()} cores.",
        f"Generated by `make {'bench-full' if args.full else 'bench'}` on {time.strftime('%Y-%m-%d')} in "
        f"{time.perf_counter() - started:.0f} s" + (" (--quick)" if args.quick else "") + ".",
        "",
        format_rows(rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick and args.only == MODULES:  # a partial run must not replace the full table
        (HERE / ("RESULTS-full.md" if args.full else "RESULTS.md")).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
