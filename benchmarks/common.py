"""What every benchmark module shares: thread control, timing, result rows and the table.

Timing: the machines are shared, and other processes only ever add time, so the statistic is the
best (shortest) of several repeats after a warm-up, the closest estimate of what the hardware can do.
Where two things are compared, :func:`interleaved` times them in turns (A, B, A, B, ...), so a burst
of load from elsewhere hits both sides alike and their ratio stays meaningful.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

import torch

ROW_KEYS = ("what", "measure", "value", "target", "ok")


class Threads:
    """Run a block with ``n`` torch threads and as many BLAS threads (numpy, via threadpoolctl)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> Threads:
        from threadpoolctl import threadpool_limits

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        self.blas = threadpool_limits(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        self.blas.unregister()
        torch.set_num_threads(self.before)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    return interleaved({"_": fn}, repeats, warmup)["_"]


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several functions in turns; returns each one's wall-clock seconds per repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def load_average() -> str:
    """The 1-minute load average against the core count, for rows measured on a shared machine."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def row(what: str, measure: str, value: str, target: str = "-", ok: bool | None = None, **extra: Any) -> dict:
    """One result. ``value`` is the text shown; ``ok`` is None where a figure is only reported; an
    optional numeric ``throughput`` (higher is better) is compared with the previous run, and
    ``gate=True`` makes a drop of more than 10% a failure (run_all.py)."""
    if not isinstance(value, str):
        raise TypeError(f"benchmark value must be a string, got {type(value).__name__} for {what!r}")
    return dict(what=what, measure=measure, value=value, target=target, ok=ok, **extra)


def ok_text(ok: bool | None) -> str:
    return {True: "yes", False: "NO", None: "reported"}[ok]


def format_rows(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (with a run-to-run change where run_all.py added one)."""
    lines = ["| what | measure | value | target | ok |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        value = r["value"] + (f" ({r['vs_last_run']})" if "vs_last_run" in r else "")
        lines.append(f"| {r['what']} | {r['measure']} | {value} | {r['target']} | {ok_text(r['ok'])} |")
    return "\n".join(lines)


def main(run: Callable[..., list[dict]], doc: str | None) -> int:
    """Command line of one module: ``python benchmarks/bench_x.py [--quick] [--full]`` prints its table
    (``--full`` where ``run`` takes ``full``: the long rows of `make bench-full`)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke test)")
    takes_full = "full" in inspect.signature(run).parameters
    if takes_full:
        parser.add_argument("--full", action="store_true", help="the long rows of `make bench-full` too")
    args = parser.parse_args()
    print(format_rows(run(args.quick, full=args.full) if takes_full else run(args.quick)))
    return 0
