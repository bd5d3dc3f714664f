"""Data pipeline speed: the batched log-mel front-end, FLAC -> features through the DataLoader, and an
epoch from the feature store against an epoch from audio.

* (a) log-mel of 64 clips of 4 s: ``LogMel`` on the whole batch in torch against
  ``librosa.feature.melspectrogram`` clip by clip (same settings, plus the same log), both on one
  thread (torch and BLAS), so the figure is the implementation's, not the core count's. Target >= 5x.
  Beside it: the convolution path that ONNX export uses.
* (b) featurised utterances per second from FLAC (``AudioDataset`` random crops -> DataLoader ->
  ``LogMel`` on batches of 16) against decode-only ``soundfile.read`` of the same files in a loop.
  Target >= 0.7x with 2 workers, the way training runs: the workers decode while the main process runs
  the front-end. With 0 workers one process does everything (reported). The CPU seconds that the whole
  process tree spent per utterance, against decode-only's, are printed beside: on a shared machine the
  wall-clock ratio of a multi-process pipeline depends on how many cores are free, the CPU ratio not.
* (c) a training epoch of ``tiny_resnet`` (forward, backward, AdamW step, batch 32, 0 workers) from the
  feature store against one from audio. The data side alone (store read against decode + log-mel), the
  model step alone, the bound they imply (no store can make an epoch faster than its model steps), the
  one-off build, and the float16 store's rounding error and its effect on the train loss are reported.

Model and front-end timings run on one torch thread: on a shared 2-core machine a second thread is
often busy elsewhere, and OpenMP then waits for it at every layer, which makes two-thread timings erratic.
Every ratio compares two figures timed in turns in the same run (see common.py).

    python benchmarks/bench_data.py [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from common import Threads, interleaved, load_average, main, row
from ncdetect.config import load_config
from ncdetect.data.dataset import AudioDataset
from ncdetect.data.features import FeatureStore, WindowPolicy
from ncdetect.data.frontends import LogMel
from ncdetect.data.loader import make_loader
from ncdetect.runs import build_model

SR = 16_000
NUM_SAMPLES = 64_600
POLICY = WindowPolicy(NUM_SAMPLES)


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


def tree_cpu_seconds() -> float | None:
    """User + system CPU seconds of this process and its live children (DataLoader workers); Linux."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()

    def fields(pid: str) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    try:
        total = 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                f = fields(pid)
            except OSError:
                continue  # exited meanwhile
            if int(pid) == me or int(f[1]) == me:
                total += (int(f[11]) + int(f[12])) / tick
        return total
    except OSError:
        return None


# -------------------------------------------------------------------------------------------- (a)
def bench_logmel(quick: bool) -> list[dict]:
    n_clips = 16 if quick else 64
    repeats = 2 if quick else 5
    clips = (0.1 * np.random.default_rng(0).standard_normal((n_clips, 4 * SR))).astype(np.float32)
    batch = torch.from_numpy(clips)
    fe = LogMel()
    what = f"log-mel, {n_clips} clips of 4 s"
    try:
        import librosa
    except ImportError:
        return [row(what, "batched torch vs librosa clip by clip", "librosa not installed", ">= 5x", None)]

    def by_librosa() -> None:
        for x in clips:
            mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                                 n_mels=80, power=2.0, center=True, pad_mode="constant")
            np.log(np.maximum(mel, 1e-6))

    def conv_path() -> None:
        fe.spectrum.use_conv = True
        try:
            fe(batch)
        finally:
            fe.spectrum.use_conv = False

    with torch.no_grad(), Threads(1):
        t = interleaved({"torch": lambda: fe(batch), "librosa": by_librosa, "conv": conv_path}, repeats)
    t_torch, t_lib, t_conv = min(t["torch"]), min(t["librosa"]), min(t["conv"])
    speedup = t_lib / t_torch
    return [
        row(f"{what}, 1 thread each", "batched torch vs librosa clip by clip",
            f"{speedup:.1f}x ({t_torch * 1e3:.0f} ms vs {t_lib * 1e3:.0f} ms)", ">= 5x", speedup >= 5,
            throughput=n_clips / t_torch),
        row(f"{what}, 1 thread", "ONNX-export path (conv DFT) vs librosa",
            f"{t_lib / t_conv:.1f}x ({t_conv * 1e3:.0f} ms)", "-", None),
    ]


# -------------------------------------------------------------------------------------------- (b)
def bench_pipeline(df: pd.DataFrame, quick: bool) -> list[dict]:
    paths = df["path"].tolist()
    n = len(paths)
    fe = LogMel()
    loaders = {}
    for workers in (0, 2):
        ds = AudioDataset(df, num_samples=NUM_SAMPLES, train=True, seed=0)
        loaders[workers] = (ds, make_loader(ds, batch_size=16, shuffle=True, num_workers=workers))
    epoch = [0]
    # CPU seconds per pass: the whole process tree, and the main process alone.
    cpu: dict[str, list[tuple[float, float]]] = {"decode": [], "w0": [], "w2": []}

    def own_cpu() -> float:
        t = os.times()
        return t.user + t.system

    def cpu_timed(name: str, fn: Any) -> Any:
        def timed_fn() -> None:
            before, own = tree_cpu_seconds(), own_cpu()
            fn()
            after = tree_cpu_seconds()
            if before is not None and after is not None:
                cpu[name].append((after - before, own_cpu() - own))
        return timed_fn

    def decode_only() -> None:
        for p in paths:
            sf.read(p, dtype="float32")

    def featurise(workers: int) -> None:
        ds, loader = loaders[workers]
        epoch[0] += 1
        ds.set_epoch(epoch[0])  # new crops every pass, as in training
        with torch.no_grad():
            for batch in loader:
                fe(batch["wave"])

    fns = {"decode": cpu_timed("decode", decode_only), "w0": cpu_timed("w0", lambda: featurise(0)),
           "w2": cpu_timed("w2", lambda: featurise(2))}
    with Threads(1):
        t = interleaved(fns, repeats=2 if quick else 4)
    load = load_average()
    loaders.clear()  # stops the workers
    decode_rate = n / min(t["decode"])
    rows = [row(f"FLAC decode, {n} files of 4-6 s", "soundfile.read, utterances/s (the reference)",
                f"{decode_rate:.0f}/s", "-", None, throughput=decode_rate)]
    for workers in (2, 0):
        name = f"w{workers}"
        rate = n / min(t[name])
        ratio = rate / decode_rate
        cpu_note = ""
        if cpu[name] and cpu["decode"]:
            decode_cpu = min(c[0] for c in cpu["decode"])
            tree, main_cpu = min(cpu[name])
            cpu_note = f"; CPU per utterance {tree / decode_cpu:.2f}x decode-only's"
            if workers:
                # With a free core per process, the slower side sets the pace: the main process's
                # front-end, or the decoding shared by the workers.
                pace = max(main_cpu, (tree - main_cpu) / workers)
                cpu_note += f", which {workers} free cores would run at {decode_cpu / pace:.1f}x"
        rows.append(row(
            f"FLAC -> log-mel batches of 16, DataLoader, {workers} workers",
            "featurised utterances/s vs decode only",
            f"{ratio:.2f}x ({rate:.0f}/s{cpu_note}; {load})",
            ">= 0.7x" if workers else "-", ratio >= 0.7 if workers else None,
            # With workers the rate depends on how many cores are free, not on the code.
            **({} if workers else {"throughput": rate}),
        ))
    return rows


# -------------------------------------------------------------------------------------------- (c)
def _tiny_resnet() -> torch.nn.Module:
    """tiny_resnet exactly as ``ncdetect train`` builds it (layout included)."""
    from importlib import resources

    cfg = load_config(Path(str(resources.files("ncdetect") / "configs" / "tiny_resnet.yaml")), [])
    torch.manual_seed(0)
    return build_model(cfg, 80)


def _train_epoch(loader: Any, ds: Any, epoch: int, fe: LogMel | None, model: torch.nn.Module,
                 opt: torch.optim.Optimizer) -> float:
    ds.set_epoch(epoch)
    model.train()
    losses = []
    for batch in loader:
        if fe is None:
            x = batch["features"]
        else:
            with torch.no_grad():
                x = fe(batch["wave"])
        loss = torch.nn.functional.cross_entropy(model(x), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _data_epoch(loader: Any, ds: Any, epoch: int, fe: LogMel | None) -> None:
    ds.set_epoch(epoch)
    with torch.no_grad():
        for batch in loader:
            if fe is not None:
                fe(batch["wave"])


def _long_windows(ds: Any) -> np.ndarray:
    """The stored training windows of a log-mel store dataset (one per utterance), ``(N, F, frames)``."""
    return np.stack([np.load(file, mmap_mode="r")[r] for file, r, _, _ in (e[0][0] for e in ds.entries)])


def bench_cache(df: pd.DataFrame, root: Path, quick: bool) -> list[dict]:
    fe = LogMel()
    n = len(df)
    batch_size = 32
    repeats = 1 if quick else 3
    rows = []
    with Threads(1):
        start = time.perf_counter()
        cache = FeatureStore(root / "cache", fe)
        cache.build(df, POLICY, train=True, batch_size=32, progress=False)
        t_build = time.perf_counter() - start
        audio_ds = AudioDataset(df, num_samples=NUM_SAMPLES, train=True, seed=0)
        cache_ds = cache.dataset(df, POLICY, train=True, seed=0)
        audio_loader = make_loader(audio_ds, batch_size=batch_size, shuffle=True, num_workers=0)
        cache_loader = make_loader(cache_ds, batch_size=batch_size, shuffle=True, num_workers=0)
        models = {k: _tiny_resnet() for k in ("audio", "cache", "step")}
        opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
        epochs = iter(range(1, 1000))
        x = torch.randn(batch_size, 1, 80, fe.num_frames(NUM_SAMPLES))
        y = torch.arange(batch_size) % 2

        def model_steps() -> None:
            # The model's share of an epoch: the same steps on features already in memory.
            for i in range(0, n, batch_size):
                b = min(batch_size, n - i)
                loss = torch.nn.functional.cross_entropy(models["step"](x[:b]), y[:b])
                opts["step"].zero_grad(set_to_none=True)
                loss.backward()
                opts["step"].step()

        t = interleaved({
            "audio": lambda: _train_epoch(audio_loader, audio_ds, next(epochs), fe, models["audio"],
                                          opts["audio"]),
            "cache": lambda: _train_epoch(cache_loader, cache_ds, next(epochs), None, models["cache"],
                                          opts["cache"]),
            "steps": model_steps,
            "audio_data": lambda: _data_epoch(audio_loader, audio_ds, next(epochs), fe),
            "cache_data": lambda: _data_epoch(cache_loader, cache_ds, next(epochs), None),
        }, repeats=repeats)
    best = {k: min(v) for k, v in t.items()}
    ratio = best["audio"] / best["cache"]
    bound = (best["steps"] + best["audio_data"]) / (best["steps"] + best["cache_data"])
    rows.append(row(
        f"tiny_resnet training epoch, {n} utterances, batch {batch_size}, 0 workers, 1 thread",
        "from the feature store vs from FLAC",
        f"{ratio:.2f}x faster ({best['cache']:.2f} s vs {best['audio']:.2f} s); the model steps alone "
        f"take {best['steps']:.2f} s, which caps the gain of any data path at about {bound:.2f}x here",
        ">= 3x", ratio >= 3, throughput=n / best["cache"],
    ))
    rows.append(row(
        f"data only, {n} utterances (no model)", "store read vs decode + log-mel",
        f"{best['audio_data'] / best['cache_data']:.0f}x faster ({n / best['cache_data']:.0f} vs "
        f"{n / best['audio_data']:.0f} utterances/s)", "-", None,
    ))
    size_mb = sum(f.stat().st_size for f in cache.path.rglob("*.npy")) / 1e6
    rows.append(row("feature store build (float32)", "one-off, utterances/s",
                    f"{n / t_build:.0f}/s ({t_build:.1f} s, {size_mb:.0f} MB)", "-", None))

    c16 = FeatureStore(root / "cache", fe, dtype="float16")
    c16.build(df, POLICY, train=True, progress=False)
    f32, f16 = _long_windows(cache_ds), _long_windows(c16.dataset(df, POLICY, train=True, seed=0))
    err = float(np.max(np.abs(f32.astype(np.float32) - f16.astype(np.float32))))
    value = f"max abs rounding error {err:.4f} (features' std {float(np.std(f32)):.2f})"
    if not quick:
        # The training effect: the same seeds and batches from both caches.
        losses = []
        for c in (cache, c16):
            ds = c.dataset(df, POLICY, train=True, seed=0)
            loader = make_loader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
            model = _tiny_resnet()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            with Threads(1):
                losses.append([_train_epoch(loader, ds, e, None, model, opt) for e in range(3)])
        value += (f"; mean train loss per epoch {', '.join(f'{v:.3f}' for v in losses[0])} (float32) vs "
                  f"{', '.join(f'{v:.3f}' for v in losses[1])} (float16)")
    rows.append(row("float16 feature store", "vs float32", value, "-", None))
    return rows


def run(quick: bool = False) -> list[dict]:
    """All data benchmarks; rows as in common.row."""
    rows = bench_logmel(quick)
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-data-") as tmp:
        root = Path(tmp)
        df = make_flac_corpus(root / "flac", 32 if quick else 128)
        rows += bench_pipeline(df, quick)
        rows += bench_cache(df.iloc[:16] if quick else df, root, quick)
    return rows


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
