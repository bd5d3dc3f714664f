"""Progress on long work, readable both on a terminal and in a log file.

Every command reports progress through :func:`progress_bar`. On a terminal it is a tqdm bar. When stderr
is not a terminal (``ncdetect run ... > run.log 2>&1``, CI, nohup), a redrawn bar would fill the log with
carriage returns, so it prints instead one plain line every ``NCDETECT_PROGRESS_SECONDS`` seconds (60 by
default) while the work lasts, and one at the end if it printed any; short work stays silent there, and
the caller's own line per epoch or stage says what was done.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

INTERVAL_ENV = "NCDETECT_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 60.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """The subset of tqdm's interface the package uses, printed as whole lines at most every ``interval``
    seconds: ``desc: 120/480 batch (25%), 1m30s, loss=0.3141``."""

    def __init__(self, iterable: Iterable[Any] | None, desc: str, total: int | None, unit: str,
                 stream: TextIO, interval: float):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.stream, self.interval = stream, interval
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.postfix = total, 0, ""
        self.started = self.last = time.monotonic()
        self.printed = self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable cannot be iterated; use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n  # type: ignore[assignment]
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line()

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.printed:  # a final line only where the work was long enough to report on
            self._line(done=True)

    def _line(self, done: bool = False) -> None:
        count = f"{self.n:g}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = tqdm.format_interval(time.monotonic() - self.started)
        parts = [f"{self.desc}: {count}", f"{'done in ' if done else ''}{elapsed}"]
        if self.postfix:
            parts.append(self.postfix)
        self.stream.write(", ".join(parts) + "\n")
        self.stream.flush()
        self.printed = True


class _Silent(PlainProgress):
    """``enabled=False``: iterates, counts, prints nothing."""

    def _line(self, done: bool = False) -> None:
        pass


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
    stream: TextIO | None = None,
) -> Any:
    """A tqdm bar on a terminal, plain periodic lines elsewhere, nothing when ``enabled`` is False.

    Use it as tqdm: iterate over it, or ``update(n)`` it inside ``with``; ``set_postfix`` works in all
    three modes. ``stream`` defaults to the current ``sys.stderr``.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent(iterable, desc, total, unit, stream, 0.0)
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream, dynamic_ncols=True)
    return PlainProgress(iterable, desc, total, unit, stream, _interval())


def echo(message: str, stream: TextIO | None = None) -> None:
    """Print one line to stderr without breaking a bar that is being drawn there."""
    tqdm.write(message, file=sys.stderr if stream is None else stream)
