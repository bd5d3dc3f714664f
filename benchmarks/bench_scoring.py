"""Scoring speed: `ncdetect detect` on one thread, and ONNX Runtime against PyTorch.

* detect: real-time factor (seconds of compute per second of audio) of ``Detector.detect_file`` on a
  60 s file with the shipped tiny_resnet config (4 s windows every 2 s, so each second of audio is seen
  twice), 1 torch thread, decoding included. Target <= 0.005. The same with hop = window is reported.
* ONNX Runtime against PyTorch: the exported graph (front-end + model) and the PyTorch modules scoring
  the same batch of 16 four-second windows, 1 thread each; the target is that ONNX Runtime is not slower
  (time ratio <= 1.0). The logits are checked to agree within 1e-4 on the way.

* bootstrap: the EER confidence interval's 300 resamples on ASVspoof 2019 LA eval size (7,355 bonafide and
  63,882 spoof scores), against 300 separate ``compute_eer`` calls on the full set, timed in turns. Target:
  the vectorised bootstrap costs less than the loop it replaces (ratio < 1).
* evaluate: 1,000,000 trials with every metric (EER, minDCF, actDCF, Cllr, min Cllr) and a 1,000-resample
  bootstrap (EER and minDCF intervals) against the EER-only evaluation with the same bootstrap, timed in
  turns, in `make bench-full` (``--full``); `make bench` times 100,000 trials and 200 resamples. Target:
  at most 3x.

The weights are untrained (speed does not depend on them). Training throughput is in bench_models.py
(model step) and bench_data.py (whole epochs from audio and from the feature cache).

    python benchmarks/bench_scoring.py [--quick] [--full]
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from common import Threads, interleaved, load_average, main, row
from ncdetect.config import load_config
from ncdetect.fileio import write_yaml
from ncdetect.runs import build_frontend, build_model, save_weights

RTF_TARGET = 0.005
SR = 16_000


def _config(name: str, *overrides: str):
    return load_config(Path(str(resources.files("ncdetect") / "configs" / f"{name}.yaml")), list(overrides))


def untrained_run(root: Path, name: str) -> Path:
    """A run folder with freshly initialised weights."""
    cfg = _config(name)
    run = root / f"run_{name}"
    run.mkdir(parents=True, exist_ok=True)
    write_yaml(run / "config.yaml", cfg.to_dict())
    torch.manual_seed(0)
    model = build_model(cfg, build_frontend(cfg).n_features)
    save_weights(model, run / "model.safetensors", model_name=cfg.model.name)
    return run


def speech_like(rng: np.random.Generator, seconds: float, spoof: bool) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(rng.uniform(100, 220) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / SR
    x = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 12)) + 0.02 * rng.standard_normal(n)
    if spoof:
        x = x + 0.2 * np.sin(2 * np.pi * 3000 * t)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def detect_rtf(root: Path, seconds: float, repeats: int) -> list[dict]:
    from ncdetect.detect import Detector

    run = untrained_run(root, "tiny_resnet")
    path = root / "long.wav"
    sf.write(str(path), speech_like(np.random.default_rng(0), seconds, False), SR)
    detectors = {"default": Detector(run, device="cpu"),
                 "hop": Detector(run, hop_seconds=4.0375, device="cpu")}
    with Threads(1):
        t = interleaved({k: (lambda d=d: d.detect_file(path)) for k, d in detectors.items()}, repeats)
    rtf = {k: min(v) / seconds for k, v in t.items()}
    what = f"detect, tiny_resnet, {seconds:.0f} s file, 1 thread"
    return [
        row(f"{what}, half-window hop (default)", "real-time factor", f"{rtf['default']:.4f}",
            f"<= {RTF_TARGET}", rtf["default"] <= RTF_TARGET, throughput=1 / rtf["default"]),
        row(f"{what}, hop = window", "real-time factor", f"{rtf['hop']:.4f}", "-", None),
    ]


def onnx_vs_torch(root: Path, repeats: int) -> list[dict]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        return [row("ONNX Runtime vs PyTorch", "time ratio", f"skipped ({err})", "<= 1.0", None)]
    from ncdetect.export import export_onnx
    from ncdetect.runs import load_run

    run_dir = untrained_run(root, "tiny_resnet")
    onnx_path = export_onnx(run_dir, root / "tiny.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    run = load_run(run_dir, "cpu")
    batch = (0.1 * np.random.default_rng(0).standard_normal((16, run.num_samples))).astype(np.float32)
    wave = torch.from_numpy(batch)
    with Threads(1):
        t = interleaved({"torch": lambda: run.logits(wave),
                         "ort": lambda: session.run(None, {"waveform": batch})}, repeats)
        diff = float(np.abs(session.run(None, {"waveform": batch})[0] - run.logits(wave).numpy()).max())
    t_torch, t_ort = min(t["torch"]), min(t["ort"])
    ratio = t_ort / t_torch
    what = "score 16 windows of 4 s, tiny_resnet, 1 thread"
    return [
        row(f"{what}, PyTorch", "windows/s", f"{16 / t_torch:.0f}", "-", None, throughput=16 / t_torch),
        row(f"{what}, ONNX Runtime", "windows/s", f"{16 / t_ort:.0f}", "-", None, throughput=16 / t_ort),
        row(f"ONNX Runtime / PyTorch time, same batch (max logit difference {diff:.1e})", "time ratio",
            f"{ratio:.2f}", "<= 1.0", ratio <= 1.0 and diff < 1e-4),
    ]


def bootstrap_speed(n_bootstrap: int, repeats: int) -> list[dict]:
    from ncdetect.evaluate import bootstrap_eers, compute_eer

    rng = np.random.default_rng(0)
    b, s = rng.normal(2, 1, 7355), rng.normal(0, 1.5, 63882)
    with Threads(1):
        t = interleaved({"bootstrap": lambda: bootstrap_eers(b, s, n_bootstrap=n_bootstrap, seed=0),
                         "one": lambda: compute_eer(b, s)}, repeats)
    t_boot, t_one = min(t["bootstrap"]), min(t["one"])
    ratio = t_boot / (n_bootstrap * t_one)
    return [row(f"bootstrap EER CI, {n_bootstrap} resamples of 7,355 + 63,882 scores, 1 thread",
                f"time vs {n_bootstrap} compute_eer calls on the full set", f"{ratio:.2f} ({t_boot:.2f} s)",
                "< 1", ratio < 1)]


EVALUATE_RATIO_TARGET = 3.0


def evaluate_speed(n: int, n_bootstrap: int, repeats: int) -> list[dict]:
    """``evaluate_scores`` with every metric (EER, minDCF, actDCF, Cllr, min Cllr, bootstrap intervals of
    EER and minDCF) against the EER-only evaluation it grew from (validation, EER, bootstrap EER
    interval), on the same ``n`` trials (10% bonafide), timed in turns."""
    import pandas as pd

    from ncdetect.evaluate import bootstrap_eer_ci, compute_eer, evaluate_scores, validate_scores

    rng = np.random.default_rng(0)
    nb = n // 10
    label = np.where(np.arange(n) < nb, "bonafide", "spoof")
    df = pd.DataFrame({"utt_id": np.arange(n).astype(str), "label": label,
                       "score": np.where(label == "bonafide", rng.normal(2, 1, n), rng.normal(0, 1.5, n))})

    def eer_only() -> None:
        v = validate_scores(df)
        bona = v.loc[v["label"] == "bonafide", "score"].to_numpy()
        spoof = v.loc[v["label"] == "spoof", "score"].to_numpy()
        compute_eer(bona, spoof)
        bootstrap_eer_ci(bona, spoof, n_bootstrap, seed=0)

    import sklearn.isotonic  # noqa: F401 - imported once per process, not part of what is timed

    with Threads(1):
        t = interleaved({"eer": eer_only, "all": lambda: evaluate_scores(df, n_bootstrap=n_bootstrap)},
                        repeats, warmup=0)
    t_eer, t_all = min(t["eer"]), min(t["all"])
    ratio = t_all / t_eer
    return [row(f"evaluate {n:,} trials, every metric + {n_bootstrap}-resample bootstrap, 1 thread, "
                f"{load_average()}", "time vs EER-only evaluation, same run",
                f"{ratio:.2f} ({t_all:.1f} s vs {t_eer:.1f} s)", f"<= {EVALUATE_RATIO_TARGET:g}",
                ratio <= EVALUATE_RATIO_TARGET)]


def run(quick: bool = False, full: bool = False) -> list[dict]:
    """Benchmark rows (see common.row). The evaluate row takes 100,000 trials and 200 resamples in `make
    bench` (seconds), 1,000,000 and 1,000 in `make bench-full` (``full``; about 7 minutes here)."""
    with tempfile.TemporaryDirectory(prefix="ncdetect-bench-scoring-") as tmp:
        root = Path(tmp)
        rows = detect_rtf(root, seconds=20.0 if quick else 60.0, repeats=2 if quick else 5)
        rows += onnx_vs_torch(root, repeats=3 if quick else 30)
    rows += bootstrap_speed(n_bootstrap=300, repeats=1 if quick else 3)
    if full:
        rows += evaluate_speed(n=1_000_000, n_bootstrap=1000, repeats=1)
    else:
        rows += evaluate_speed(n=20_000 if quick else 100_000, n_bootstrap=50 if quick else 200, repeats=1)
    return rows


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
