"""Inference off the event loop: admission with a bound, decoding in a thread pool, and model threads
that batch the windows of concurrent requests together.

A request is admitted only once its upload is complete (a slow client holds no worker and no queue
slot); at most ``max_pending`` requests are decoded or scored at once, and the next one gets
:class:`Busy` (HTTP 503 with Retry-After). Decoding goes through the project's audio loader, so a bad
upload gets the same one-line reason as ``ncdetect detect``. A model thread takes every window that is
waiting, up to the detector's batch size, so concurrent clients share batches, and a long file is cut
into batch-sized jobs, so it cannot hold the model while short files wait.

``ncdetect serve`` runs one model thread per core, each with one intra-op thread: batches run side by
side rather than one batch spread over the cores. On a busy machine, a multi-threaded batch waits for
its slowest thread, and scoring slowed several-fold in our measurements; single-threaded batches do not.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..detect import SAMPLE_RATE, Detector, Windows, combine_logits
from ..errors import AudioError, NcdetectError

_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


class Busy(Exception):
    """More requests than the bound: the caller answers 503 with ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"busy: try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    windows: Windows
    lo: int
    hi: int
    future: Future

    def stack(self) -> np.ndarray:
        w = self.windows
        return np.stack([w.wave[s : s + w.window] for s in w.starts[self.lo : self.hi]])


class Scorer:
    """The server's detector: decoding threads, an admission bound and one batching model thread."""

    def __init__(
        self,
        detector: Detector,
        max_pending: int = 16,
        decode_threads: int | None = None,
        model_threads: int = 1,
    ):
        self.detector = detector
        self.max_pending = max(1, int(max_pending))
        self._pending = 0
        self._lock = threading.Lock()
        self._decode = ThreadPoolExecutor(
            decode_threads or min(4, os.cpu_count() or 1), thread_name_prefix="ncdetect-decode"
        )
        # Uploads are copied to a private folder under server-made names: the loader reads paths, and no
        # name from a request ever becomes part of one.
        # A TemporaryDirectory also removes itself at exit when close() is never called.
        self._tmpdir = tempfile.TemporaryDirectory(prefix="ncdetect-serve-")
        self._tmp = Path(self._tmpdir.name)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._carry: deque[_Job | None] = deque()
        self._gather = threading.Lock()
        self._seconds_per_window = 0.05
        self._threads = [
            threading.Thread(target=self._model_loop, name=f"ncdetect-model-{i}", daemon=True)
            for i in range(max(1, int(model_threads)))
        ]
        for thread in self._threads:
            thread.start()

    # --- admission ---------------------------------------------------------------------------------

    def admit(self) -> _Admission:
        return _Admission(self)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the waiting work at the measured speed, at least 1."""
        waiting = self._jobs.qsize() + len(self._carry)
        seconds = waiting * self.detector.batch_size * self._seconds_per_window
        return max(1, min(60, round(seconds + 0.5)))

    # --- work --------------------------------------------------------------------------------------

    async def detect(self, name: str, upload: BinaryIO) -> dict[str, Any]:
        """The result for one uploaded file: the fields of ``ncdetect detect`` plus ``duration_s`` and
        ``windows`` [{start_s, score}], or ``{path, error}``."""
        loop = asyncio.get_running_loop()
        try:
            wave, windows = await loop.run_in_executor(self._decode, self._prepare, name, upload)
        except NcdetectError as err:
            return {"path": name, "error": getattr(err, "reason", str(err))}
        size = self.detector.batch_size
        futures = []
        for lo in range(0, len(windows.starts), size):
            job = _Job(windows, lo, min(lo + size, len(windows.starts)), Future())
            self._jobs.put(job)
            futures.append(asyncio.wrap_future(job.future))
        logits = np.concatenate(await asyncio.gather(*futures))
        score, window_scores = combine_logits(logits)
        return {
            **self.detector.result(name, score),
            "duration_s": round(len(wave) / SAMPLE_RATE, 3),
            "windows": [
                {"start_s": round(t, 4), "score": float(s)}
                for t, s in zip(windows.start_seconds(), window_scores, strict=True)
            ],
        }

    def _prepare(self, name: str, upload: BinaryIO) -> tuple[np.ndarray, Windows]:
        from ..data.audio import load_audio

        match = _SAFE_SUFFIX.fullmatch(Path(name).suffix)
        fd, tmp = tempfile.mkstemp(suffix=match.group(0) if match else "", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(upload, out, 1 << 20)
            wave = load_audio(tmp)
        except AudioError as err:
            # libsndfile quotes the file it opened: the client hears of its own file name, not ours.
            raise AudioError(name, err.reason.replace(tmp, name)) from None
        finally:
            os.unlink(tmp)
        return wave, self.detector.windows(wave)

    def _model_loop(self) -> None:
        import time

        if len(self._threads) > 1:
            import torch

            # Per thread: OpenMP keeps the team size of each calling thread, so a setting made in the main
            # thread would leave this one with a team per core.
            torch.set_num_threads(1)
        while True:
            with self._gather:  # one thread at a time takes what is waiting, the others compute
                job = self._carry.popleft() if self._carry else self._jobs.get()
                if job is None:
                    return
                batch, n = [job], job.hi - job.lo
                while n < self.detector.batch_size:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None or n + more.hi - more.lo > self.detector.batch_size:
                        self._carry.append(more)  # the next round starts with it (or stops)
                        break
                    batch.append(more)
                    n += more.hi - more.lo
            started = time.perf_counter()
            try:
                logits = self.detector.model.logits(np.concatenate([j.stack() for j in batch]))
            except Exception as err:  # the awaiting requests must hear of it, not hang
                for j in batch:
                    j.future.set_exception(err)
                continue
            self._seconds_per_window = (time.perf_counter() - started) / n
            i = 0
            for j in batch:
                j.future.set_result(logits[i : i + j.hi - j.lo])
                i += j.hi - j.lo

    def close(self) -> None:
        for _ in self._threads:  # one stop mark per model thread
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._decode.shutdown(wait=False, cancel_futures=True)
        self._tmpdir.cleanup()


class _Admission:
    """``with scorer.admit():`` holds one of ``max_pending`` slots, or raises :class:`Busy`."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def __enter__(self) -> _Admission:
        s = self.scorer
        with s._lock:
            if s._pending >= s.max_pending:
                raise Busy(s.retry_after())
            s._pending += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self.scorer._lock:
            self.scorer._pending -= 1
