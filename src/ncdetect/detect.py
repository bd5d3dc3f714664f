"""``ncdetect detect``: is this audio bonafide or spoofed? Any length, one JSON line per file.

Windows: a clip no longer than the window (default: the training window) is tile-padded to it, as in
training. A longer clip is cut into windows every ``hop`` (default half a window), plus one window flush
with the end so the tail is covered, and the window logits are averaged. Averaging logits (rather than
probabilities, or a majority vote) averages the per-window log-odds: the combined score is the mean of
the window scores logit(bonafide) - logit(spoof), i.e. the geometric mean of the windows' odds, which is
what a naive-Bayes combination of independent windows gives up to a scale.

Score, LLR, probability, decision. The score ranks clips but is not a probability: a network's logits
are not calibrated. A run calibrated by ``ncdetect calibrate`` (``RUN/calibration.json``) maps the score
to a log-likelihood ratio ``llr`` (how much likelier the audio is if bonafide than if spoofed), and with a
stated prior P(spoof) (``--prior-spoof``, default 0.5) to ``probability`` = P(bonafide | audio). Its
default threshold is the Bayes threshold of the stated costs (``--cost-miss``, ``--cost-fa``; defaults
those of ASVspoof 5, 1 and 10) and prior: ``label`` is bonafide when the llr exceeds ln(C_fa P(spoof) /
(C_miss (1 - P(spoof)))), i.e. when P(bonafide) > C_fa / (C_fa + C_miss). ``threshold`` is always given
in score units (the score where that happens), so "score > threshold" is the rule in both cases.

An uncalibrated run has ``calibrated: false``, ``llr`` and ``probability`` null (a sigmoid of its score
is not the probability of anything) and the threshold 0, the model's own argmax; ``--threshold dev-eer``
uses the dev-EER threshold stored in the run's metrics.json instead (it depends on the dev set's attacks,
hence not the default). A number for ``--threshold`` is a score threshold for any run.

A file that cannot be read yields ``{"path": ..., "error": ...}`` and the others go on; the command's
exit status is then 1.

The model is a run folder (PyTorch) or an ``.onnx`` file from ``ncdetect export`` (onnxruntime; the
run's config travels in its metadata). ``ncdetect serve`` scores with the same :class:`Detector`
(:func:`plan_windows` and :func:`combine_logits`), so its numbers are those of ``detect``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .calibration import Calibration, load_calibration, posterior_bonafide
from .data.audio import SAMPLE_RATE
from .errors import NcdetectError

if TYPE_CHECKING:
    from .runs import LoadedRun


AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf",
     ".w64", ".rf64", ".wv"}
)


def iter_inputs(inputs: Iterable[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """Files to examine, as ``(path, error)``: folders walked recursively for audio extensions
    (sorted), files taken as given whatever their extension; a folder without audio is an error."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                yield path, f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this folder"
            for p in found:
                yield p, None
        else:
            yield path, None


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows over a clip of ``length`` samples (one window when it fits)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)  # cover the tail
    return starts


def resolve_threshold(threshold: float | str, metrics: dict[str, Any], run_dir: Path,
                      calibration: Calibration | None = None, bayes_llr: float | None = None) -> float:
    """The score threshold: a number, 'dev-eer', or 'auto' / 'bayes' (the score whose LLR is the Bayes
    threshold ``bayes_llr``; 'auto' is 0 for an uncalibrated run)."""
    if isinstance(threshold, (int, float)):
        return float(threshold)
    text = str(threshold).strip().lower()
    if text in ("auto", "bayes"):
        if calibration is not None and bayes_llr is not None:
            return calibration.score_at(bayes_llr)
        if text == "bayes":
            raise NcdetectError(f"{run_dir}: --threshold bayes needs a calibrated run (ncdetect calibrate)")
        return 0.0
    if text in ("dev-eer", "dev_eer", "eer"):
        value = metrics.get("dev_threshold_at_best")
        if value is None:
            raise NcdetectError(
                f"{run_dir / 'metrics.json'}: no dev-EER threshold (the run was trained without --dev); "
                "use a number for --threshold"
            )
        return float(value)
    try:
        return float(text)
    except ValueError:
        raise NcdetectError(
            f"--threshold: expected a number, 'auto', 'bayes' or 'dev-eer', got {threshold!r}"
        ) from None


@dataclass
class Windows:
    """The windows of one clip, as :class:`Detector` scores them: ``starts`` index ``wave`` (trimmed and,
    when shorter than a window, tile-padded); ``offset`` is where ``wave`` began in the decoded clip."""

    wave: np.ndarray
    starts: list[int]
    window: int
    offset: int = 0

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The windows stacked ``batch_size`` at a time (a long file is never stacked whole)."""
        for i in range(0, len(self.starts), batch_size):
            yield np.stack([self.wave[s : s + self.window] for s in self.starts[i : i + batch_size]])

    def start_seconds(self) -> list[float]:
        return [(self.offset + s) / SAMPLE_RATE for s in self.starts]


def plan_windows(wave: np.ndarray, window: int, hop: int, trim: bool = False) -> Windows:
    """Cut a 16 kHz clip into the windows that are scored (see the module docstring)."""
    from .data.audio import tile_pad, trim_silence

    offset = 0
    if trim:
        trimmed = trim_silence(wave)
        # trim_silence returns a slice of its input; its start in the clip places the windows in time.
        if trimmed.base is not None and np.shares_memory(trimmed, wave):
            byte_offset = trimmed.__array_interface__["data"][0] - wave.__array_interface__["data"][0]
            offset = byte_offset // wave.itemsize
        wave = trimmed
    starts = window_starts(len(wave), window, hop)
    if len(wave) < window:
        wave = tile_pad(wave, window)
    return Windows(wave, starts, window, offset)


def combine_logits(logits: np.ndarray) -> tuple[float, np.ndarray]:
    """The file's score (the difference of the mean window logits) and each window's score, from the
    window logits [n, 2] (0 = spoof, 1 = bonafide), in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    mean = logits.mean(axis=0)
    return float(mean[1] - mean[0]), logits[:, 1] - logits[:, 0]


class TorchModel:
    """A run folder's front-end and model (PyTorch)."""

    def __init__(self, run_dir: Path, device: str):
        from .runs import load_run

        self.run = load_run(run_dir, device)
        self.config = self.run.config
        self.metrics = self.run.metrics
        self.calibration = load_calibration(run_dir)
        self.path = run_dir

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.run.logits(torch.from_numpy(batch)).double().cpu().numpy()

    def parameters(self) -> int:
        return sum(p.numel() for p in self.run.model.parameters())


class OnnxModel:
    """An ONNX file from ``ncdetect export``, run by onnxruntime; the run's config and metrics travel in
    the file's metadata."""

    def __init__(self, path: Path, threads: int = 0):
        import json

        from .config import validate_config
        from .errors import ModelFileError

        try:
            import onnxruntime as ort
        except ImportError:
            raise NcdetectError(
                f"{path}: ONNX models need onnxruntime (pip install 'ncdetect[onnx]')"
            ) from None
        if not path.is_file():
            raise ModelFileError(f"{path}: ONNX file not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for every kind of bad file
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "ncdetect_config" not in meta:
            raise ModelFileError(
                f"{path}: no ncdetect metadata (window, front-end); export it with `ncdetect export`"
            )
        self.config = validate_config(json.loads(meta["ncdetect_config"]), str(path))
        self.metrics = json.loads(meta.get("ncdetect_metrics", "{}"))
        raw = meta.get("ncdetect_calibration")
        self.calibration = None if raw is None else Calibration.from_dict(json.loads(raw), path)
        self._parameters = int(meta.get("ncdetect_parameters", 0))
        self.path = path

    def logits(self, batch: np.ndarray) -> np.ndarray:
        logits, _ = self.session.run(None, {"waveform": np.ascontiguousarray(batch, dtype=np.float32)})
        return logits.astype(np.float64)

    def parameters(self) -> int:
        return self._parameters


def load_model(model: str | Path, device: str = "auto", onnx_threads: int = 0) -> TorchModel | OnnxModel:
    """A run folder (PyTorch) or an ``.onnx`` file from ``ncdetect export`` (onnxruntime, with
    ``onnx_threads`` intra-op threads; 0 = its default)."""
    path = Path(model)
    if path.suffix.lower() == ".onnx" and not path.is_dir():
        return OnnxModel(path, onnx_threads)
    return TorchModel(path, device)


class Detector:
    """A loaded model plus the windowing of :func:`detect`; reusable across many files. ``run_dir`` is a
    run folder or an ONNX file from ``ncdetect export``."""

    def __init__(
        self,
        run_dir: str | Path,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        threshold: float | str = "auto",
        batch_size: int = 16,
        device: str = "auto",
        onnx_threads: int = 0,
        prior_spoof: float = 0.5,
        cost_miss: float = 1.0,
        cost_fa: float = 10.0,
    ):
        from .evaluate import DcfCosts

        self.costs = DcfCosts(cost_miss, cost_fa, prior_spoof)
        self.model = load_model(run_dir, device, onnx_threads)
        self.calibration = self.model.calibration
        sr = SAMPLE_RATE
        default_window = self.model.config.data.num_samples
        self.window = default_window if window_seconds is None else round(window_seconds * sr)
        if self.window < 400:
            raise NcdetectError(f"--window-seconds: {window_seconds} s is shorter than one 25 ms frame")
        self.hop = self.window // 2 if hop_seconds is None else round(hop_seconds * sr)
        if self.hop < 1:
            raise NcdetectError(f"--hop-seconds must be positive, got {hop_seconds}")
        self.threshold = resolve_threshold(threshold, self.model.metrics, Path(run_dir), self.calibration,
                                           self.costs.bayes_threshold)
        # The Bayes rule decides on the LLR itself, not on a score rounded back from it.
        self.llr_threshold = (self.costs.bayes_threshold if self.calibration is not None
                              and str(threshold).strip().lower() in ("auto", "bayes") else None)
        self.batch_size = max(1, int(batch_size))

    @property
    def run(self) -> LoadedRun:
        """The loaded run folder (PyTorch models only)."""
        if not isinstance(self.model, TorchModel):
            raise AttributeError("an ONNX model has no run folder")
        return self.model.run

    def windows(self, wave: np.ndarray) -> Windows:
        return plan_windows(wave, self.window, self.hop, self.model.config.data.trim_silence)

    def score_windows(self, windows: Windows) -> tuple[float, np.ndarray]:
        """The file's score and the score of each window."""
        logits = np.concatenate([self.model.logits(b) for b in windows.batches(self.batch_size)])
        return combine_logits(logits)

    def score_wave(self, wave: np.ndarray) -> tuple[float, int]:
        """Mean window score of a 16 kHz clip and the number of windows."""
        windows = self.windows(wave)
        score, _ = self.score_windows(windows)
        return score, len(windows.starts)

    def result(self, path: str, score: float) -> dict[str, Any]:
        """The fields every front-end reports for a scored file (see the module docstring)."""
        cal = self.calibration
        llr = None if cal is None else float(cal.llr(score))
        if llr is not None and self.llr_threshold is not None:
            bonafide = llr > self.llr_threshold
        else:
            bonafide = score > self.threshold
        return {
            "path": path,
            "score": score,
            "label": "bonafide" if bonafide else "spoof",
            "probability": None if llr is None else posterior_bonafide(llr, self.costs.prior_spoof),
            "threshold": self.threshold,
            "calibrated": cal is not None,
            "llr": llr,
            "prior_spoof": None if cal is None else self.costs.prior_spoof,
        }

    def detect_file(self, path: str | Path) -> dict[str, Any]:
        from .data.audio import load_audio

        wave = load_audio(path)
        windows = self.windows(wave)
        score, _ = self.score_windows(windows)
        return {
            **self.result(str(path), score),
            "windows": len(windows.starts),
            "seconds": round(len(wave) / SAMPLE_RATE, 3),
        }


def detect(
    inputs: Iterable[str | Path],
    run_dir: str | Path,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    threshold: float | str = "auto",
    batch_size: int = 16,
    device: str = "auto",
    prior_spoof: float = 0.5,
    cost_miss: float = 1.0,
    cost_fa: float = 10.0,
) -> Iterator[dict[str, Any]]:
    """One result per file: ``path, score, label, probability, threshold, calibrated, llr, prior_spoof,
    windows, seconds`` or ``path, error`` for a file that cannot be read (the others go on)."""
    detector = Detector(run_dir, window_seconds, hop_seconds, threshold, batch_size, device,
                        prior_spoof=prior_spoof, cost_miss=cost_miss, cost_fa=cost_fa)
    for path, error in iter_inputs(inputs):
        if error is not None:
            yield {"path": str(path), "error": error}
            continue
        try:
            yield detector.detect_file(path)
        except NcdetectError as err:
            yield {"path": str(path), "error": _reason(str(err), str(path))}


def _reason(message: str, path: str) -> str:
    # AudioError messages start with the path, which the JSON line already carries.
    return message[len(path) + 2 :] if message.startswith(path + ": ") else message
