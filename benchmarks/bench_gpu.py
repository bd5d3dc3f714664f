"""GPU benchmarks, run whenever CUDA is available (one row saying so otherwise).

* AMP training throughput: samples/s of tiny_resnet and resnet18 training steps (batch 64 of 4 s log-mel)
  in float32 and under the autocast that ``train.amp=auto`` picks (bfloat16 where supported, else float16
  with a gradient scaler).
* GPU utilisation during a real DataLoader epoch: FLAC files -> ``AudioDataset`` random crops in worker
  processes -> log-mel on the GPU -> tiny_resnet training step, the way ``ncdetect train`` runs; the mean
  utilisation (nvidia-smi's, sampled every 50 ms) and utterances/s. The same epoch from the feature store
  is timed beside it: on a GPU the model step is cheap, so this is where the store's speed-up shows.
* Embedding extraction (``ncdetect embed``): utterances/s from FLAC.

``--device cpu`` runs the same code on the CPU (a smoke test of this file; utilisation is then n/a).

    python benchmarks/bench_gpu.py [--quick] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench_data import make_flac_corpus
from bench_models import shipped_model
from common import format_rows, row
from ncdetect.data.dataset import AudioDataset
from ncdetect.data.features import FeatureStore, WindowPolicy
from ncdetect.data.frontends import LogMel
from ncdetect.data.loader import make_loader

NUM_SAMPLES = 64_600


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """What ``train.amp=auto`` uses: bf16 on CUDA that supports it, else fp16; nothing on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class UtilisationSampler:
    """Samples the GPU's utilisation (percent) in a background thread while the block runs."""

    def __init__(self, device: torch.device, period: float = 0.05) -> None:
        self.device, self.period, self.samples = device, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))  # needs pynvml / nvidia-ml-py
        except Exception:
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        index = self.device.index or 0
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
        try:
            return float(out.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is None:
                return
            self.samples.append(value)
            self._stop.wait(self.period)

    def __enter__(self) -> UtilisationSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> str:
        return f"{sum(self.samples) / len(self.samples):.0f}%" if self.samples else "n/a"


def _train_step(model: Any, opt: Any, scaler: Any, x: torch.Tensor, y: torch.Tensor,
                dtype: torch.dtype | None) -> None:
    """One optimiser step, under autocast when ``dtype`` is given."""
    ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with ctx:
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def amp_training(device: torch.device, quick: bool) -> list[dict]:
    batch = 16 if quick else 64
    steps = 3 if quick else 20
    dtype = _autocast_dtype(device)
    rows = []
    for name in ("tiny_resnet", "resnet18"):
        rates = {}
        for mode in ("fp32", "amp") if dtype is not None else ("fp32",):
            model = shipped_model(name).to(device).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=mode == "amp" and dtype == torch.float16)
            x = torch.randn(batch, 1, 80, 404, device=device)
            y = torch.arange(batch, device=device) % 2

            step_dtype = dtype if mode == "amp" else None
            for _ in range(3):
                _train_step(model, opt, scaler, x, y, step_dtype)
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                _train_step(model, opt, scaler, x, y, step_dtype)
            _sync(device)
            rates[mode] = batch * steps / (time.perf_counter() - start)
        what = f"train step {name}, batch {batch} x 4 s log-mel, {device.type}"
        rows.append(row(what, "samples/s, float32", f"{rates['fp32']:.0f}", "-", None,
                        throughput=rates["fp32"]))
        if "amp" in rates:
            rows.append(row(f"{what}, AMP {str(dtype).replace('torch.', '')}", "samples/s (speed-up)",
                            f"{rates['amp']:.0f} ({rates['amp'] / rates['fp32']:.1f}x)", "-", None,
                            throughput=rates["amp"]))
    return rows


def _epoch(loader: Any, ds: Any, epoch: int, fe: LogMel | None, model: Any, opt: Any,
           device: torch.device) -> int:
    dtype = _autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ds.set_epoch(epoch)
    n = 0
    for batch in loader:
        x = batch["features" if fe is None else "wave"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        if fe is not None:
            with torch.no_grad():
                x = fe(x)
        _train_step(model, opt, scaler, x, y, dtype)
        n += len(y)
    _sync(device)
    return n


def dataloader_epoch(df: Any, root: Path, device: torch.device, quick: bool) -> list[dict]:
    workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    batch = 16 if quick else 64
    fe = LogMel().to(device)
    rows = []
    audio_ds = AudioDataset(df, num_samples=NUM_SAMPLES, train=True, seed=0)
    cache, policy = FeatureStore(root / "cache", LogMel()), WindowPolicy(NUM_SAMPLES)
    cache.build(df, policy, train=True, batch_size=batch, num_workers=workers, device=device, progress=False)
    cache_ds = cache.dataset(df, policy, train=True, seed=0)
    times = {}
    for name, ds, frontend in (("audio", audio_ds, fe), ("cache", cache_ds, None)):
        loader = make_loader(ds, batch_size=batch, shuffle=True, num_workers=workers)
        model = shipped_model("tiny_resnet").to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _epoch(loader, ds, 0, frontend, model, opt, device)  # warm-up: workers, kernels, page cache
        with UtilisationSampler(device) as util:
            start = time.perf_counter()
            n = _epoch(loader, ds, 1, frontend, model, opt, device)
            times[name] = time.perf_counter() - start
        source = "FLAC, log-mel on the device" if name == "audio" else "feature store"
        rows.append(row(f"tiny_resnet training epoch from {source}, {len(df)} utterances, {workers} workers",
                        "utterances/s, mean GPU utilisation", f"{n / times[name]:.0f}/s, {util.mean}", "-",
                        None, throughput=n / times[name]))
        del loader
    rows.append(row(f"tiny_resnet training epoch on {device.type}", "from the feature store vs from FLAC",
                    f"{times['audio'] / times['cache']:.1f}x faster", ">= 3x",
                    times["audio"] / times["cache"] >= 3 if device.type == "cuda" else None))
    return rows


def embedding_rate(df: Any, root: Path, device: torch.device) -> list[dict]:
    from bench_scoring import untrained_run
    from ncdetect.embed import embed_manifest

    run = untrained_run(root, "tiny_resnet")
    manifest = root / "embed.csv"
    df.to_csv(manifest, index=False)
    workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    embed_manifest(run, manifest, root / "emb_warm", device=device.type, num_workers=workers, progress=False)
    start = time.perf_counter()
    embed_manifest(run, manifest, root / "emb", device=device.type, num_workers=workers, progress=False)
    rate = len(df) / (time.perf_counter() - start)
    what = f"ncdetect embed, tiny_resnet, {len(df)} FLAC files of 4-6 s, {workers} workers, {device.type}"
    return [row(what, "utterances/s", f"{rate:.0f}", "-", None, throughput=rate)]


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    """Benchmark rows (see common.row); only a 'skipped' row without CUDA unless ``device`` is given."""
    if device is None:
        if not torch.cuda.is_available():
            return [row("GPU: AMP training, GPU utilisation in a DataLoader epoch, embedding extraction",
                        "-", "skipped: no CUDA device on this machine", "-", None)]
        device = "cuda"
    dev = torch.device(device)
    rows = amp_training(dev, quick)
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-gpu-") as tmp:
        root = Path(tmp)
        df = make_flac_corpus(root / "flac", 32 if quick else 1024)
        rows += dataloader_epoch(df, root, dev, quick)
        rows += embedding_rate(df, root, dev)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    args = parser.parse_args()
    print(format_rows(run(args.quick, args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
