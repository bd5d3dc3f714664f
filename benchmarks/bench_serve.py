"""Serving speed: ``ncdetect serve`` under 1 and 8 concurrent clients against in-process batched scoring.

* serve: requests per second and p50/p95 latency for 4 s clips (one clip per request, one window each
  with the shipped tiny_resnet config), from 1 client and from 8 concurrent clients, each client a
  thread with its own keep-alive HTTP connection. The server is the real command, ``ncdetect serve``, in
  its own process on the same cores, with its default threads.
* in-process: the same clips decoded and scored by ``Detector`` in batches of 16 windows (what
  ``ncdetect detect`` does, batched across files), with one thread or all cores, whichever is faster.
* ratio: 8-client requests/s over in-process clips/s, measured in the same run. Target >= 0.8: the
  HTTP layer, the upload and the per-request decoding cost at most a fifth of the throughput.

The weights are untrained (speed does not depend on them).

    python benchmarks/bench_serve.py [--quick]
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from bench_scoring import speech_like, untrained_run
from common import Threads, load_average, main, row

TARGET = 0.8
SR = 16_000
BOUNDARY = "ncdetect-bench-boundary"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(path: Path) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


def in_process(run: Path, clips: list[Path], batch: int = 16) -> Callable[[], float]:
    """A function that decodes every clip, scores all windows in batches of ``batch`` and returns the
    clips per second."""
    from ncdetect.data.audio import load_audio
    from ncdetect.detect import Detector, combine_logits

    detector = Detector(run, device="cpu", batch_size=batch)

    def once() -> float:
        start = time.perf_counter()
        windows = [detector.windows(load_audio(p)) for p in clips]
        stacked = np.concatenate([b for w in windows for b in w.batches(batch)])
        logits = np.concatenate([detector.model.logits(stacked[i : i + batch])
                                 for i in range(0, len(stacked), batch)])
        i = 0
        for w in windows:
            combine_logits(logits[i : i + len(w.starts)])
            i += len(w.starts)
        return len(clips) / (time.perf_counter() - start)

    return once


def load_test(port: int, bodies: list[bytes], clients: int, rounds: int = 1) -> tuple[float, list[float]]:
    """Requests per second and each request's latency, ``clients`` threads posting ``bodies`` in turn."""
    latencies: list[float] = []
    lock = threading.Lock()
    work = [b for _ in range(rounds) for b in bodies]
    shares = [work[i::clients] for i in range(clients)]
    failures: list[str] = []

    def client(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        mine = []
        for body in share:
            start = time.perf_counter()
            conn.request("POST", "/v1/detect", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200 or "score" not in json.loads(payload)[0]:
                failures.append(f"HTTP {response.status}: {payload[:200]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) failed, e.g. {failures[0]}")
    return len(work) / elapsed, latencies


def _start_server(run: Path, port: int, log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - kept open for the server's lifetime, closed by the OS at exit
    command = [sys.executable, "-m", "ncdetect.cli", "serve", "--model", str(run), "--port", str(port),
               "--max-pending", "64"]
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ncdetect serve exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ncdetect serve did not start within 120 s")


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (see common.row)."""
    n_clips, repeats = (16, 2) if quick else (48, 5)
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-serve-") as tmp:
        root = Path(tmp)
        run_dir = untrained_run(root, "tiny_resnet")
        rng = np.random.default_rng(0)
        clips = []
        for i in range(n_clips):
            path = root / f"clip{i:03d}.wav"
            sf.write(str(path), speech_like(rng, 4.0, spoof=bool(i % 2)), SR, subtype="PCM_16")
            clips.append(path)
        bodies = [_body(p) for p in clips]
        port = _free_port()
        server = _start_server(run_dir, port, root / "serve.log")
        try:
            load_test(port, bodies[:4], 2, 1)  # warm-up: model, threads, connections
            library = in_process(run_dir, clips)
            library()
            # In turns, best of each: a burst of load from elsewhere hits every side alike. The library
            # gets the better of one thread and all cores (on a busy machine one thread can win by far).
            base, one, eight = 0.0, (0.0, []), (0.0, [])
            for _ in range(repeats):
                for threads in sorted({1, os.cpu_count() or 1}):
                    with Threads(threads):
                        base = max(base, library())
                one = max(one, load_test(port, bodies, 1, 1), key=lambda r: r[0])
                eight = max(eight, load_test(port, bodies, 8, 1), key=lambda r: r[0])
        finally:
            server.terminate()
            server.wait(timeout=30)
    (one_rps, one_lat), (eight_rps, eight_lat) = one, eight
    ratio = eight_rps / base
    what = f"serve, 4 s clips, tiny_resnet, {os.cpu_count()} cores"
    rows = []
    for clients, rps, lat in ((1, one_rps, one_lat), (8, eight_rps, eight_lat)):
        p50, p95 = np.percentile(np.array(lat) * 1000, [50, 95])
        rows += [
            row(f"{what}, {clients} client(s)", "requests/s", f"{rps:.1f}", "-", None, throughput=rps),
            row(f"{what}, {clients} client(s)", "latency p50 / p95", f"{p50:.0f} / {p95:.0f} ms", "-", None),
        ]
    rows += [
        row("in-process batched scoring (decode + 16-window batches), same clips and cores", "clips/s",
            f"{base:.1f}", "-", None, throughput=base),
        row(f"serve with 8 clients / in-process batched scoring ({load_average()})", "throughput ratio",
            f"{ratio:.2f}", f">= {TARGET}", ratio >= TARGET),
    ]
    return rows


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
