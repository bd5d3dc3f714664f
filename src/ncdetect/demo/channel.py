"""ffmpeg as the channel: G.722 decoding of the prompts and codec round trips, many files per call.

One ffmpeg process handles a whole batch (N inputs mapped to N outputs), because starting a process
costs more than coding a few seconds of audio.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import NcdetectError

SR = 16_000

# name -> (encoder arguments, container, sample rate on the wire, delay in samples at 16 kHz). The
# delay (G.722's QMF filters, measured by cross-correlation) is removed so that outputs stay aligned.
CODECS: dict[str, tuple[list[str], str, int, int]] = {
    "g722": (["-c:a", "g722"], "g722", 16_000, 22),
    "mp3-32k": (["-c:a", "libmp3lame", "-b:a", "32k"], "mp3", 16_000, 0),
    "gsm": (["-c:a", "libgsm"], "gsm", 8_000, 0),
    "opus-12k": (["-c:a", "libopus", "-b:a", "12k", "-application", "voip", "-compression_level", "5"],
                 "ogg", 16_000, 0),
}
_ENCODERS = {"g722": "g722", "mp3-32k": "libmp3lame", "gsm": "libgsm", "opus-12k": "libopus"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise NcdetectError(f"ffmpeg failed ({tail}): {' '.join(cmd[:8])} ...")


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise NcdetectError(
            "ffmpeg not found; install the Debian package ffmpeg "
            "(`sudo apt-get install ffmpeg` or `make demo`)"
        )
    return exe


def check_encoders() -> None:
    """Raise when this ffmpeg lacks an encoder that the corpus uses."""
    cmd = [_ffmpeg(), "-hide_banner", "-encoders"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    have = {line.split()[1] for line in out.stdout.splitlines() if len(line.split()) > 1}
    missing = sorted(enc for enc in _ENCODERS.values() if enc not in have)
    if missing:
        raise NcdetectError(
            f"{_ffmpeg()}: lacks the encoders {missing}; "
            "install Debian's ffmpeg (`sudo apt-get install ffmpeg`)"
        )


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad a decoded signal to the input length (codecs add or drop a few frames)."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


def _decode_cmd(inputs: Sequence[Path], fmt: str | None, outputs: Sequence[Path]) -> list[str]:
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for src in inputs:
        cmd += (["-f", fmt] if fmt else []) + ["-i", str(src)]
    for i, dst in enumerate(outputs):
        cmd += ["-map", f"{i}:a", "-ac", "1", "-ar", str(SR), "-c:a", "pcm_f32le", str(dst)]
    return cmd


def decode_g722(files: Sequence[Path]) -> list[np.ndarray]:
    """Decode raw G.722 files (``ffmpeg -f g722 -i X.g722 -ar 16000``) to float32 at 16 kHz."""
    if not files:
        return []
    with tempfile.TemporaryDirectory(prefix="ncdetect-g722-") as tmp:
        outs = [Path(tmp) / f"{i}.wav" for i in range(len(files))]
        _run(_decode_cmd(files, "g722", outs))
        return [sf.read(str(o), dtype="float32")[0] for o in outs]


def roundtrip(signals: Sequence[np.ndarray], codec: str) -> list[np.ndarray]:
    """Encode and decode 16 kHz float signals through ``codec``; the output keeps each input's length."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    if not signals:
        return []
    args, container, wire_sr, delay = CODECS[codec]
    with tempfile.TemporaryDirectory(prefix="ncdetect-codec-") as tmp:
        root = Path(tmp)
        ins = [root / f"in{i}.wav" for i in range(len(signals))]
        encs = [root / f"enc{i}.{container}" for i in range(len(signals))]
        outs = [root / f"out{i}.wav" for i in range(len(signals))]
        for path, x in zip(ins, signals, strict=True):
            sf.write(str(path), np.clip(x, -1.0, 1.0), SR, subtype="PCM_16")
        enc = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        for path in ins:
            enc += ["-i", str(path)]
        for i, path in enumerate(encs):
            enc += ["-map", f"{i}:a", "-ac", "1", "-ar", str(wire_sr), *args, "-f", container, str(path)]
        _run(enc)
        _run(_decode_cmd(encs, container if container in ("g722", "gsm") else None, outs))
        decoded = [sf.read(str(o), dtype="float32")[0][delay:] for o in outs]
        return [_fit(y, len(x)) for y, x in zip(decoded, signals, strict=True)]
