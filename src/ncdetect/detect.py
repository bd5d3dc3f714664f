"""``ncdetect detect``: is this audio bonafide or spoofed? Any length, one JSON line per file.

Windows: a clip no longer than the window (default: the training window) is tile-padded to it, as in
training. A longer clip is cut into windows every ``hop`` (default half a window), plus one window flush
with the end so the tail is covered, and the window logits are averaged. Averaging logits (rather than
probabilities, or a majority vote) averages the per-window log-odds: the combined score is the mean of
the window scores logit(bonafide) - logit(spoof), i.e. the geometric mean of the windows' odds, which is
what a naive-Bayes combination of independent windows gives up to a scale.

Decision: ``label`` is ``bonafide`` when the score exceeds the threshold, by default 0, the model's own
decision boundary (argmax of the logits, probability 0.5). ``--threshold dev-eer`` uses the dev-EER
threshold stored in the run's metrics.json instead (the point where the dev false-accept and
false-reject rates are equal; it depends on the dev set's attacks, hence not the default).
``probability`` = sigmoid(score) = the softmax probability of bonafide for the averaged logits.

A file that cannot be read yields ``{"path": ..., "error": ...}`` and the others go on; the command's
exit status is then 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import NcdetectError

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


def resolve_threshold(threshold: float | str, metrics: dict[str, Any], run_dir: Path) -> float:
    if isinstance(threshold, (int, float)):
        return float(threshold)
    text = str(threshold).strip().lower()
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
        raise NcdetectError(f"--threshold: expected a number or 'dev-eer', got {threshold!r}") from None


class Detector:
    """A loaded run plus the windowing of :func:`detect`; reusable across many files."""

    def __init__(
        self,
        run_dir: str | Path,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        threshold: float | str = 0.0,
        batch_size: int = 16,
        device: str = "auto",
    ):
        from .runs import load_run

        self.run = load_run(run_dir, device)
        sr = 16_000
        self.window = self.run.num_samples if window_seconds is None else round(window_seconds * sr)
        if self.window < 400:
            raise NcdetectError(f"--window-seconds: {window_seconds} s is shorter than one 25 ms frame")
        self.hop = self.window // 2 if hop_seconds is None else round(hop_seconds * sr)
        if self.hop < 1:
            raise NcdetectError(f"--hop-seconds must be positive, got {hop_seconds}")
        self.threshold = resolve_threshold(threshold, self.run.metrics, Path(run_dir))
        self.batch_size = max(1, int(batch_size))

    def score_wave(self, wave: np.ndarray) -> tuple[float, int]:
        """Mean window score of a 16 kHz clip and the number of windows."""
        from .data.audio import tile_pad, trim_silence

        if self.run.config.data.trim_silence:
            wave = trim_silence(wave)
        starts = window_starts(len(wave), self.window, self.hop)
        if len(wave) < self.window:
            wave = tile_pad(wave, self.window)
        total = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(starts), self.batch_size):
            chunk = np.stack([wave[s : s + self.window] for s in starts[i : i + self.batch_size]])
            total += self.run.logits(torch.from_numpy(chunk)).double().sum(dim=0).cpu()
        mean = total / len(starts)
        return float(mean[1] - mean[0]), len(starts)

    def detect_file(self, path: str | Path) -> dict[str, Any]:
        from .data.audio import load_audio

        wave = load_audio(path)
        score, n_windows = self.score_wave(wave)
        return {
            "path": str(path),
            "score": score,
            "label": "bonafide" if score > self.threshold else "spoof",
            "probability": _sigmoid(score),
            "threshold": self.threshold,
            "windows": n_windows,
            "seconds": round(len(wave) / 16_000, 3),
        }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def detect(
    inputs: Iterable[str | Path],
    run_dir: str | Path,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    threshold: float | str = 0.0,
    batch_size: int = 16,
    device: str = "auto",
) -> Iterator[dict[str, Any]]:
    """One result per file: ``path, score, label, probability, threshold, windows, seconds`` or
    ``path, error`` for a file that cannot be read (the others go on)."""
    detector = Detector(run_dir, window_seconds, hop_seconds, threshold, batch_size, device)
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
