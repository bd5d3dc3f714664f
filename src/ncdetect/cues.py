"""Trivial cues: can a single, content-free property of the file tell bonafide from spoof?

A corpus where it can (spoofs shorter, quieter, band-limited, or starting with less silence) rewards
detectors that learn the shortcut instead of the artefacts of synthesis. For every utterance we measure:

- ``duration``: length in seconds;
- ``rms``: level of the whole file in dBFS;
- ``rolloff95``: the frequency (Hz) below which 95% of the energy of the file's long-term average
  power spectrum lies (512-point frames, 10 ms hop, Hann window);
- ``leading_silence``: seconds before the first 25 ms frame that comes within 40 dB of the loudest
  frame (the rule that :func:`ncdetect.data.audio.trim_silence` uses).

Each feature is then used as a detection score on its own. A feature may point either way (longer could
mean bonafide or spoof), so the reported EER is the lower of EER(feature) and EER(-feature): the best a
detector made of that one number could do. 50% means the cue carries nothing; near 0% means the corpus
gives the label away.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .data.audio import SAMPLE_RATE, load_audio
from .errors import NcdetectError
from .progress import progress_bar

FEATURES = ("duration", "rms", "rolloff95", "leading_silence")
FRAME, HOP, N_FFT = 400, 160, 512
SILENCE_DB = 40.0
ROLLOFF = 0.95


def _frames(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    n = 1 + (len(x) - frame) // hop
    return np.lib.stride_tricks.sliding_window_view(x, frame)[::hop][:n]


def leading_silence(x: np.ndarray, sr: int = SAMPLE_RATE, top_db: float = SILENCE_DB) -> float:
    """Seconds before the first frame within ``top_db`` of the loudest frame."""
    frames = _frames(x.astype(np.float64), FRAME, HOP)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    first = int(np.argmax(db > db.max() - top_db))
    return first * HOP / sr


def rolloff(x: np.ndarray, sr: int = SAMPLE_RATE, fraction: float = ROLLOFF) -> float:
    """Roll-off frequency of the long-term average power spectrum."""
    frames = _frames(x.astype(np.float64), N_FFT, HOP) * np.hanning(N_FFT)
    power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    cumulative = np.cumsum(power)
    if cumulative[-1] <= 0:
        return 0.0
    k = int(np.searchsorted(cumulative, fraction * cumulative[-1]))
    return float(k * sr / N_FFT)


def features(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """The four trivial features of one signal."""
    return {
        "duration": len(x) / sr,
        "rms": float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)),
        "rolloff95": rolloff(x, sr),
        "leading_silence": leading_silence(x, sr),
    }


def trivial_cue_scores(manifest: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """Per-utterance features: ``utt_id, label, attack`` plus one column per name in FEATURES.

    ``manifest`` has absolute paths (as :func:`ncdetect.data.manifest.read_manifest` returns them).
    An unreadable file raises :class:`ncdetect.errors.AudioError` naming it.
    """
    rows = []
    for row in progress_bar(manifest.itertuples(index=False), total=len(manifest), desc="trivial cues",
                            unit="file", enabled=progress):
        x = load_audio(row.path)
        rows.append({"utt_id": row.utt_id, "label": row.label, "attack": getattr(row, "attack", "-"),
                     **features(x)})
    return pd.DataFrame(rows, columns=["utt_id", "label", "attack", *FEATURES])


def _eer_function() -> Callable[[np.ndarray, np.ndarray], tuple[float, float]]:
    from .evaluate import compute_eer

    return compute_eer


def cue_eers(scores: pd.DataFrame) -> dict[str, float]:
    """EER (%) of each feature column of ``scores`` used as a detector, in its better orientation."""
    compute_eer = _eer_function()
    bona = scores["label"] == "bonafide"
    spoof = scores["label"] == "spoof"
    if not bona.any() or not spoof.any():
        raise NcdetectError("trivial cues need both bonafide and spoof utterances")
    out = {}
    for name in FEATURES:
        b = scores.loc[bona, name].to_numpy(dtype=np.float64)
        s = scores.loc[spoof, name].to_numpy(dtype=np.float64)
        out[name] = float(min(compute_eer(b, s)[0], compute_eer(-b, -s)[0]))
    return out


def trivial_cue_eers(manifest: pd.DataFrame, progress: bool = False) -> dict[str, float]:
    """EER (%) of each trivial feature used alone as a score on ``manifest`` (see the module docstring)."""
    return cue_eers(trivial_cue_scores(manifest, progress=progress))
