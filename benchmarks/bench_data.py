"""Data pipeline speed: the batched log-mel front-end, FLAC -> features through the DataLoader, and an
epoch from the feature cache against an epoch from audio.

* (a) log-mel of a batch of 4 s clips, ``LogMel`` batched in torch against ``librosa.feature.melspectrogram``
  clip by clip (same settings, plus the same log), both on one thread. Target >= 5x.
* (b) featurised utterances per second from FLAC (``AudioDataset`` random crops -> DataLoader -> ``LogMel``
  on batches of 16) against decode-only ``soundfile.read`` of the same files in a loop. Target >= 0.7x,
  for 2 workers, the way training runs: the workers decode while the main process runs the front-end.
  With 0 workers one process does both, so the ratio is at best decode / (decode + front-end); on one
  CPU core the 4 s log-mel costs about half as much as decoding 5 s of FLAC, so that row is reported
  only. The load average is printed beside it: on a shared machine other processes take the cores.
* (c) one training epoch of ``tiny_resnet`` (forward, backward, AdamW step) from the feature cache
  against one from audio, 0 workers; plus the data-only speed-up (what the cache is for: on a GPU the
  model step is cheap and data loading dominates, on this CPU the model step dominates), the one-off
  cache build time, and the float16 cache's largest rounding error and its effect on the train loss.

Every ratio compares two figures measured in the same run, so a busy shared machine moves both. Times
are medians over repeats after a warm-up pass (which also warms the page cache for both sides).

    python benchmarks/bench_data.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from ncdetect.data.cache import FeatureCache
from ncdetect.data.dataset import AudioDataset, make_loader
from ncdetect.data.frontends import LogMel

SR = 16_000
NUM_SAMPLES = 64_600


class _Threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(what: str, measure: str, value: str, target: str = "", ok: bool | None = None, **extra: Any) -> dict:
    return dict(what=what, measure=measure, value=value, target=target, ok=ok, **extra)


def make_flac_corpus(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` FLAC files of 4-6 s (harmonics plus noise) and their manifest; spoofs carry a faint
    high tone, so a model can learn the classes (the float16 comparison trains on them)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "bonafide" if i % 2 else "spoof"
        length = int(SR * rng.uniform(4.0, 6.0))
        t = np.arange(length) / SR
        f0 = rng.uniform(90, 220)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 10)) * 0.1
        x = x + 0.02 * rng.standard_normal(length)
        if label == "spoof":
            x = x + 0.01 * np.sin(2 * np.pi * rng.uniform(3000, 3400) * t)
        path = root / f"utt{i:04d}.flac"
        sf.write(str(path), x.astype(np.float32), SR)
        rows.append(dict(utt_id=f"utt{i:04d}", path=str(path), label=label, dataset="bench",
                         attack="-" if label == "bonafide" else "A01", speaker="s0"))
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------- (a)
def bench_logmel(quick: bool) -> list[dict]:
    n_clips = 16 if quick else 64
    rng = np.random.default_rng(0)
    clips = (0.1 * rng.standard_normal((n_clips, 4 * SR))).astype(np.float32)
    fe = LogMel()
    batch = torch.from_numpy(clips)
    rows = []
    with _Threads(1), torch.no_grad():
        t_torch = _median_time(lambda: fe(batch), repeats=3 if quick else 7)
        fe.spectrum.use_conv = True
        t_conv = _median_time(lambda: fe(batch), repeats=3 if quick else 5)
        fe.spectrum.use_conv = False
    try:
        import librosa
    except ImportError:
        return [_row(f"log-mel, {n_clips} x 4 s", "batched torch vs librosa", "librosa not installed",
                     ">= 5x", None)]

    def by_librosa() -> None:
        for x in clips:
            mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                                 n_mels=80, power=2.0, center=True, pad_mode="constant")
            np.log(np.maximum(mel, 1e-6))

    with _Threads(1):
        t_librosa = _median_time(by_librosa, repeats=1 if quick else 3)
    speedup = t_librosa / t_torch
    rows.append(_row(f"log-mel, {n_clips} x 4 s, 1 thread", "batched torch vs librosa clip by clip",
                     f"{speedup:.1f}x ({t_torch * 1e3:.0f} ms vs {t_librosa * 1e3:.0f} ms)", ">= 5x",
                     speedup >= 5, throughput=n_clips / t_torch))
    rows.append(_row(f"log-mel, {n_clips} x 4 s, 1 thread", "ONNX-export path (conv DFT) vs librosa",
                     f"{t_librosa / t_conv:.1f}x ({t_conv * 1e3:.0f} ms)", "reported", None))
    return rows


# -------------------------------------------------------------------------------------------- (b)
def _decode_only(paths: list[str]) -> None:
    for p in paths:
        sf.read(p, dtype="float32")


def _featurise_epoch(loader: Any, ds: AudioDataset, fe: LogMel, epoch: int) -> int:
    ds.set_epoch(epoch)
    n = 0
    with torch.no_grad():
        for batch in loader:
            fe(batch["wave"])
            n += len(batch["index"])
    return n


def bench_pipeline(df: pd.DataFrame, quick: bool) -> list[dict]:
    paths = df["path"].tolist()
    fe = LogMel()
    rows = []
    with _Threads(1):
        t_decode = _median_time(lambda: _decode_only(paths), repeats=2 if quick else 3)
        decode_rate = len(paths) / t_decode
        rows.append(_row(f"FLAC decode, {len(paths)} files of 4-6 s", "soundfile.read, utterances/s",
                         f"{decode_rate:.0f}/s", "reference", None, throughput=decode_rate))
        for workers in (0, 2):
            ds = AudioDataset(df, num_samples=NUM_SAMPLES, train=True, seed=0)
            loader = make_loader(ds, batch_size=16, shuffle=True, num_workers=workers)
            epochs = iter(range(100))
            t = _median_time(
                lambda loader=loader, ds=ds, epochs=epochs: _featurise_epoch(loader, ds, fe, next(epochs)),
                repeats=2 if quick else 3,
            )
            rate = len(paths) / t
            ratio = rate / decode_rate
            load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if workers else ""
            rows.append(_row(f"FLAC -> log-mel batches, DataLoader, {workers} workers",
                             "featurised utterances/s vs decode only", f"{ratio:.2f}x ({rate:.0f}/s{load})",
                             ">= 0.7x" if workers else "reported", ratio >= 0.7 if workers else None,
                             throughput=rate))
            del loader
    return rows


# -------------------------------------------------------------------------------------------- (c)
def _train_epoch(loader: Any, ds: Any, epoch: int, fe: LogMel | None, model: torch.nn.Module,
                 opt: torch.optim.Optimizer) -> float:
    ds.set_epoch(epoch)
    model.train()
    losses = []
    for batch in loader:
        x = batch["features"] if fe is None else fe(batch["wave"])
        loss = torch.nn.functional.cross_entropy(model(x), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _load_epoch(loader: Any, ds: Any, epoch: int, fe: LogMel | None) -> None:
    ds.set_epoch(epoch)
    with torch.no_grad():
        for batch in loader:
            if fe is not None:
                fe(batch["wave"])


def bench_cache(df: pd.DataFrame, root: Path, quick: bool) -> list[dict]:
    from ncdetect.models import create_model

    fe = LogMel()
    rows = []
    repeats = 1 if quick else 2
    with _Threads(2):
        start = time.perf_counter()
        cache = FeatureCache(root / "cache", fe, df, num_samples=NUM_SAMPLES)
        cache.build(batch_size=32, progress=False)
        t_build = time.perf_counter() - start
        audio_ds = AudioDataset(df, num_samples=NUM_SAMPLES, train=True, seed=0)
        cache_ds = cache.dataset(train=True, seed=0)
        audio_loader = make_loader(audio_ds, batch_size=32, shuffle=True, num_workers=0)
        cache_loader = make_loader(cache_ds, batch_size=32, shuffle=True, num_workers=0)

        def timed_epochs(loader: Any, ds: Any, frontend: LogMel | None) -> float:
            torch.manual_seed(0)
            model = create_model("tiny_resnet", n_features=80)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            epochs = iter(range(100))
            return _median_time(lambda: _train_epoch(loader, ds, next(epochs), frontend, model, opt),
                                repeats=repeats)

        t_audio = timed_epochs(audio_loader, audio_ds, fe)
        t_cache = timed_epochs(cache_loader, cache_ds, None)
        load_audio_t = _median_time(lambda: _load_epoch(audio_loader, audio_ds, 0, fe), repeats=repeats)
        load_cache_t = _median_time(lambda: _load_epoch(cache_loader, cache_ds, 0, None), repeats=repeats)
    n = len(df)
    rows.append(_row(f"tiny_resnet epoch, {n} utterances, 0 workers, 2 threads", "from cache vs from audio",
                     f"{t_audio / t_cache:.2f}x faster ({t_cache:.2f} s vs {t_audio:.2f} s)", "reported",
                     None, throughput=n / t_cache))
    rows.append(_row(f"data only, {n} utterances", "cache read vs decode + log-mel",
                     f"{load_audio_t / load_cache_t:.1f}x faster ({n / load_cache_t:.0f}/s)", "reported",
                     None))
    rows.append(_row("feature cache build (float32)", "one-off, utterances/s", f"{n / t_build:.0f}/s "
                     f"({t_build:.1f} s, {(cache.path / 'features.npy').stat().st_size / 1e6:.0f} MB)",
                     "reported", None))

    c16 = FeatureCache(root / "cache", fe, df, num_samples=NUM_SAMPLES, dtype="float16").build(progress=False)
    f32 = np.load(cache.path / "features.npy", mmap_mode="r")
    f16 = np.load(c16.path / "features.npy", mmap_mode="r")
    err = float(np.max(np.abs(f32.astype(np.float32) - f16.astype(np.float32))))
    spread = float(np.std(f32))
    value = f"max abs rounding error {err:.4f} (features' std {spread:.2f})"
    if not quick:
        # The training effect: the same seeds and batches from both caches.
        losses = []
        for c in (cache, c16):
            ds = c.dataset(train=True, seed=0)
            loader = make_loader(ds, batch_size=32, shuffle=True, num_workers=0)
            torch.manual_seed(0)
            model = create_model("tiny_resnet", n_features=80)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            with _Threads(2):
                losses.append([_train_epoch(loader, ds, e, None, model, opt) for e in range(3)])
        value += (f"; mean train loss per epoch {', '.join(f'{v:.3f}' for v in losses[0])} (float32) vs "
                  f"{', '.join(f'{v:.3f}' for v in losses[1])} (float16)")
    rows.append(_row("float16 feature cache", "vs float32", value, "reported", None))
    return rows


def run(quick: bool) -> list[dict]:
    """All data benchmarks; rows with ``what, measure, value, target, ok`` (see run_all.py)."""
    rows = bench_logmel(quick)
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-data-") as tmp:
        root = Path(tmp)
        df = make_flac_corpus(root / "flac", 32 if quick else 128)
        rows += bench_pipeline(df, quick)
        rows += bench_cache(df.iloc[:16] if quick else df, root, quick)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips and repeats, for a smoke test")
    args = parser.parse_args()
    rows = run(args.quick)
    print("| what | measure | value | target | ok |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        ok = {True: "yes", False: "NO", None: "reported"}[r["ok"]]
        print(f"| {r['what']} | {r['measure']} | {r['value']} | {r['target']} | {ok} |")


if __name__ == "__main__":
    main()
