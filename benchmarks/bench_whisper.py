"""Whisper front-end and codec augmentation: what they cost.

* Whisper tiny.en encoder (CTranslate2, int8, one thread, batches of 16 windows of 4 s) against the log-mel
  front-end on the same batch and thread, timed in turns: windows/s per core and the time ratio. Target:
  at least 50 windows of 4 s per second per core.
* The two backends of the frozen encoder in the same turns: CTranslate2 int8 against the PyTorch encoder
  (``backend: torch``, float32), for the encoder output and for ``layers: 1``, and the torch backend's
  every layer in one pass (``layers: all``): windows/s per core and the torch / CTranslate2 time ratio.
* Codec augmentation: rendering codec/channel copies (ffmpeg round trips in batches, default
  ``augment.codec`` settings) and a feature-store build with K = 4 copies against one without, on the
  same clips: the time ratio is what ``augment.codec`` adds to the one-off store build (epochs cost the
  same either way: they read one window from the memory map).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from common import Threads, interleaved, load_average, main, row

SR = 16_000
WINDOW = 64_000  # 4 s: 400 mel frames, 200 encoder frames
TARGET_WPS = 50.0


def _speechlike(n: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / SR
    out = []
    for _ in range(n):
        f0 = rng.uniform(90, 220)
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / SR
        x = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        out.append(0.2 * x + 0.01 * rng.standard_normal(length))
    return np.stack(out).astype(np.float32)


def bench_frontend(quick: bool) -> list[dict]:
    from ncdetect.data.frontends import LogMel, build_frontend

    batch = 16
    waves = torch.from_numpy(_speechlike(batch, WINDOW))
    try:
        full = build_frontend("whisper", threads=1, batch_size=batch, compute_type="int8")
        first = build_frontend("whisper", threads=1, batch_size=batch, compute_type="int8", layers=1)
        torch_full = build_frontend("whisper", batch_size=batch, backend="torch")
        torch_first = build_frontend("whisper", batch_size=batch, backend="torch", layers=1)
        torch_every = build_frontend("whisper", batch_size=batch, backend="torch", layers="all")
    except Exception as err:  # the extra is missing: report, do not fail the other benchmarks
        return [row("Whisper tiny.en encoder", "windows/s per core", f"skipped ({err})", ">= 50", None)]
    logmel = LogMel()
    with Threads(1):
        fns = {"all": full, "first": first, "logmel": logmel, "torch_all": torch_full,
               "torch_first": torch_first, "torch_every": torch_every}
        times = interleaved({k: (lambda fe=fe: fe(waves)) for k, fe in fns.items()},
                            repeats=3 if quick else 7)
    t_l = min(times["logmel"])
    rows = []
    for key, label in (("all", "all 4 layers (the encoder output)"), ("first", "layers: 1")):
        t_w = min(times[key])
        wps = batch / t_w
        rows += [
            row(f"Whisper tiny.en front-end, {label} (int8, batch 16 x 4 s, 1 thread)", "windows/s per core",
                f"{wps:.1f} ({load_average()})", f">= {TARGET_WPS:.0f}", wps >= TARGET_WPS, throughput=wps),
            row(f"Whisper ({label}) / log-mel front-end time, same batch", "time ratio", f"{t_w / t_l:.1f}",
                "-", None),
        ]
    rows.append(row("log-mel front-end, same batch and thread", "windows/s per core", f"{batch / t_l:.0f}",
                    "-", None, throughput=batch / t_l))
    for key, ct2, label in (("torch_all", "all", "the encoder output"), ("torch_first", "first", "layers: 1"),
                            ("torch_every", "all", "layers: all, 5 stacked in one pass")):
        t_t = min(times[key])
        rows += [
            row(f"Whisper backend torch (float32), {label}, same batch and thread", "windows/s per core",
                f"{batch / t_t:.1f} ({load_average()})", "-", None, throughput=batch / t_t),
            row(f"Whisper backend torch / ctranslate2 int8 time ({label}; int8 encoder output for all)",
                "time ratio", f"{t_t / min(times[ct2]):.2f}", "-", None),
        ]
    return rows


def bench_codec(quick: bool) -> list[dict]:
    from ncdetect.config import CodecAugmentConfig
    from ncdetect.data.codec_augment import draw_variant, render, utterance_key
    from ncdetect.data.features import FeatureStore, WindowPolicy
    from ncdetect.data.frontends import LogMel

    if shutil.which("ffmpeg") is None:
        return [row("codec augmentation", "copies/s", "skipped (no ffmpeg)", "-", None)]
    n, k, length = (16, 2, 24_000) if quick else (48, 4, 24_000)
    cfg = CodecAugmentConfig(enabled=True, variants=k)
    signals = list(_speechlike(n, length, seed=1))
    variants = [draw_variant(cfg, utterance_key(f"u{i}", ""), 0) for i in range(n)]
    start = time.perf_counter()
    render(signals, variants)
    render_s = time.perf_counter() - start
    rows = [row(f"codec/channel copies of 1.5 s windows (batch of {n}, ffmpeg in 2 threads)", "copies/s",
                f"{n / render_s:.1f}", "-", None, throughput=n / render_s)]
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-codec-") as tmp:
        root = Path(tmp)
        paths = []
        for i, x in enumerate(signals):
            sf.write(str(root / f"u{i}.wav"), x, SR)
            paths.append(str(root / f"u{i}.wav"))
        df = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "path": paths,
                           "label": ["bonafide", "spoof"] * (n // 2)})
        timings = {}
        for name, codec in (("clean", None), ("codec", cfg)):
            start = time.perf_counter()
            FeatureStore(root / name, LogMel()).build(df, WindowPolicy(length // 3 * 2), train=True,
                                                      codec=codec, progress=False)
            timings[name] = time.perf_counter() - start
    rows.append(row(f"feature-store build with K = {k} codec copies / without (log-mel, {n} clips)",
                    "time ratio", f"{timings['codec'] / timings['clean']:.1f} "
                    f"({1000 * (timings['codec'] - timings['clean']) / (n * k):.0f} ms per copy)", "-", None))
    return rows


def run(quick: bool = False) -> list[dict]:
    return bench_frontend(quick) + bench_codec(quick)


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
