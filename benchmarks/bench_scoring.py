"""Inference and end-to-end training speed: `ncdetect detect`, ONNX Runtime against PyTorch, `train()`.

* detect: real-time factor (seconds of compute per second of audio) of ``Detector.detect_file`` on a
  60 s file with the tiny_resnet config (4 s windows every 2 s, so each second of audio is seen twice),
  1 torch thread, decoding included. Target <= 0.005. The same with hop = window is reported beside it.
* ONNX Runtime against PyTorch: the exported graph (front-end + model) and the PyTorch modules scoring the
  same batch of 16 four-second windows, 1 thread each; the target is that ONNX Runtime is not slower
  (time ratio <= 1.0). The scores are checked to agree within 1e-4 on the way.
* training: samples/s of the second epoch of ``ncdetect.train.train`` on WAV files (4 s windows: decoding,
  cropping, log-mel, forward, backward, AdamW), batch 16, 2 threads, no workers. This is the end-to-end
  figure that RUN/metrics.json reports; benchmarks/bench_models.py reports the model-only step rate.

The weights are untrained (speed does not depend on them). Timings are medians of repeats; the machine
may be shared, which inflates absolute times, so ratios are the figures to trust.

    python benchmarks/bench_scoring.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from ncdetect.config import load_config
from ncdetect.fileio import write_yaml
from ncdetect.runs import build_frontend, build_model, save_weights

RTF_TARGET = 0.005
SR = 16_000


class _Threads:
    def __init__(self, n: int):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _config(name: str, *overrides: str):
    return load_config(Path(str(resources.files("ncdetect") / "configs" / f"{name}.yaml")), list(overrides))


def _untrained_run(root: Path, name: str) -> Path:
    """A run folder with freshly initialised weights."""
    cfg = _config(name)
    run = root / f"run_{name}"
    run.mkdir(parents=True, exist_ok=True)
    write_yaml(run / "config.yaml", cfg.to_dict())
    torch.manual_seed(0)
    model = build_model(cfg, build_frontend(cfg).n_features)
    save_weights(model, run / "model.safetensors", model_name=cfg.model.name)
    return run


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _speech_like(rng: np.random.Generator, seconds: float, spoof: bool) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(rng.uniform(100, 220) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / SR
    x = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 12)) + 0.02 * rng.standard_normal(n)
    if spoof:
        x = x + 0.2 * np.sin(2 * np.pi * 3000 * t)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def detect_rtf(root: Path, seconds: float, repeats: int) -> list[dict]:
    from ncdetect.detect import Detector

    run = _untrained_run(root, "tiny_resnet")
    path = root / "long.wav"
    sf.write(str(path), _speech_like(np.random.default_rng(0), seconds, False), SR)
    rows = []
    with _Threads(1):
        for hop, what in ((None, "half-window hop (default)"), (4.0375, "hop = window")):
            det = Detector(run, hop_seconds=hop, device="cpu")
            rtf = _median_time(lambda d=det: d.detect_file(path), repeats) / seconds
            default = hop is None
            rows.append(dict(
                what=f"detect, tiny_resnet, {seconds:.0f} s file, {what}, 1 thread",
                measure="real-time factor",
                value=f"{rtf:.4f}",
                target=f"<= {RTF_TARGET}" if default else "-",
                ok=(rtf <= RTF_TARGET) if default else None,
            ))
    return rows


def onnx_vs_torch(root: Path, repeats: int) -> list[dict]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        return [dict(what="ONNX Runtime vs PyTorch", measure="time ratio", value=f"skipped ({err})",
                     target="<= 1.0", ok=None)]
    from ncdetect.export import export_onnx
    from ncdetect.runs import load_run

    run_dir = _untrained_run(root, "tiny_resnet")
    onnx_path = export_onnx(run_dir, root / "tiny.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    run = load_run(run_dir, "cpu")
    batch = (0.1 * np.random.default_rng(0).standard_normal((16, run.num_samples))).astype(np.float32)
    wave = torch.from_numpy(batch)
    with _Threads(1):
        t_torch = _median_time(lambda: run.logits(wave), repeats)
        t_ort = _median_time(lambda: session.run(None, {"waveform": batch}), repeats)
        diff = float(np.abs(session.run(None, {"waveform": batch})[0] - run.logits(wave).numpy()).max())
    ratio = t_ort / t_torch
    return [
        dict(what="score 16 x 4 s windows, tiny_resnet, PyTorch, 1 thread", measure="windows/s",
             value=f"{16 / t_torch:.1f}", target="-", ok=None, throughput=16 / t_torch),
        dict(what="score 16 x 4 s windows, tiny_resnet, ONNX Runtime, 1 thread", measure="windows/s",
             value=f"{16 / t_ort:.1f}", target="-", ok=None, throughput=16 / t_ort),
        dict(what=f"ONNX Runtime / PyTorch time, same batch (max logit difference {diff:.1e})",
             measure="time ratio", value=f"{ratio:.2f}", target="<= 1.0", ok=ratio <= 1.0 and diff < 1e-4),
    ]


def train_throughput(root: Path, name: str, n_clips: int) -> dict:
    from ncdetect.train import train

    rng = np.random.default_rng(1)
    corpus = root / "corpus"
    rows = []
    for i in range(n_clips):
        label = "bonafide" if i % 4 == 0 else "spoof"
        path = corpus / f"u{i:04d}.wav"
        if not path.exists():
            corpus.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), _speech_like(rng, 4.5, label == "spoof"), SR)
        rows.append(dict(utt_id=f"u{i:04d}", path=str(path), label=label, dataset="bench",
                         attack="-" if label == "bonafide" else "A01", speaker="s"))
    manifest = root / f"train_{n_clips}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cfg = _config(name, "data.batch_size=16", "data.num_workers=0", "optim.epochs=2", "train.threads=2",
                  "train.device=cpu")
    metrics = train(cfg, manifest, root / f"train_{name}", force=True, progress=False)
    rate = metrics["epochs"][-1]["samples_per_s"]
    params = sum(p.numel() for p in build_model(cfg, build_frontend(cfg).n_features).parameters())
    return dict(
        what=f"train() end to end, {name} ({params / 1e6:.2f} M params), batch 16 x 4 s from WAV, 2 threads",
        measure="samples/s", value=f"{rate:.1f}", target="-", ok=None, throughput=rate,
    )


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows: ``what, measure, value, target, ok`` (plus ``throughput`` for reported rates)."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-scoring-") as tmp:
        root = Path(tmp)
        rows += detect_rtf(root, seconds=20.0 if quick else 60.0, repeats=2 if quick else 5)
        rows += onnx_vs_torch(root, repeats=3 if quick else 10)
        for name in ("tiny_resnet", "resnet18"):
            rows.append(train_throughput(root, name, n_clips=32 if quick else 96))
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| what | measure | value | target | ok |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        ok = {True: "yes", False: "NO", None: "reported"}[r["ok"]]
        lines.append(f"| {r['what']} | {r['measure']} | {r['value']} | {r['target']} | {ok} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter file, fewer clips and repeats")
    args = parser.parse_args()
    print(format_rows(run(quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
