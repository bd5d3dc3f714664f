"""ffmpeg as a codec: many 16 kHz signals encoded and decoded through one setting in one pair of calls.

One ffmpeg process handles a whole batch (N inputs mapped to N outputs), because starting a process costs
more than coding a few seconds of audio. The demo corpus' channels and the training-time codec
augmentation both code audio through :func:`encode_decode`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import NcdetectError
from .audio import SAMPLE_RATE


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise NcdetectError(
            "ffmpeg not found; install the Debian package ffmpeg "
            "(`sudo apt-get install ffmpeg` or `make demo`)"
        )
    return exe


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise NcdetectError(f"ffmpeg failed ({tail}): {' '.join(cmd[:8])} ...")


def fit(x: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad a decoded signal to the input length (codecs add or drop a few frames)."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


def decode_cmd(inputs: Sequence[Path], fmt: str | None, outputs: Sequence[Path]) -> list[str]:
    cmd = [ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for src in inputs:
        cmd += (["-f", fmt] if fmt else []) + ["-i", str(src)]
    for i, dst in enumerate(outputs):
        cmd += ["-map", f"{i}:a", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_f32le", str(dst)]
    return cmd


def encode_decode(
    signals: Sequence[np.ndarray],
    args: Sequence[str],
    container: str,
    wire_sr: int,
    delay: int,
    runner: Callable[[list[str]], None] = run,
) -> list[np.ndarray]:
    """Encode 16 kHz float signals with the encoder ``args`` into ``container`` at ``wire_sr``, decode
    them, drop the codec's ``delay`` (samples at 16 kHz) and keep each input's length."""
    if not signals:
        return []
    with tempfile.TemporaryDirectory(prefix="ncdetect-codec-") as tmp:
        root = Path(tmp)
        ins = [root / f"in{i}.wav" for i in range(len(signals))]
        encs = [root / f"enc{i}.{container}" for i in range(len(signals))]
        outs = [root / f"out{i}.wav" for i in range(len(signals))]
        for path, x in zip(ins, signals, strict=True):
            sf.write(str(path), np.clip(x, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        enc = [ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        for path in ins:
            enc += ["-i", str(path)]
        for i, path in enumerate(encs):
            enc += ["-map", f"{i}:a", "-ac", "1", "-ar", str(wire_sr), *args, "-f", container, str(path)]
        runner(enc)
        # Raw G.722 and GSM streams carry no header: the decoder must be told the format.
        runner(decode_cmd(encs, container if container in ("g722", "gsm") else None, outs))
        decoded = [sf.read(str(o), dtype="float32")[0][delay:] for o in outs]
    return [fit(y, len(x)) for y, x in zip(decoded, signals, strict=True)]
