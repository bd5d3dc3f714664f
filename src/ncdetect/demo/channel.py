"""ffmpeg as the channel: G.722 decoding of the prompts and codec round trips, many files per call.

One ffmpeg process handles a whole batch (N inputs mapped to N outputs), because starting a process
costs more than coding a few seconds of audio.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ..data.ffmpeg import decode_cmd, encode_decode, ffmpeg, run
from ..errors import NcdetectError

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


def check_encoders() -> None:
    """Raise when this ffmpeg lacks an encoder that the corpus uses."""
    cmd = [ffmpeg(), "-hide_banner", "-encoders"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    have = {line.split()[1] for line in out.stdout.splitlines() if len(line.split()) > 1}
    missing = sorted(enc for enc in _ENCODERS.values() if enc not in have)
    if missing:
        raise NcdetectError(
            f"{ffmpeg()}: lacks the encoders {missing}; "
            "install Debian's ffmpeg (`sudo apt-get install ffmpeg`)"
        )


def decode_g722(files: Sequence[Path]) -> list[np.ndarray]:
    """Decode raw G.722 files (``ffmpeg -f g722 -i X.g722 -ar 16000``) to float32 at 16 kHz."""
    if not files:
        return []
    with tempfile.TemporaryDirectory(prefix="ncdetect-g722-") as tmp:
        outs = [Path(tmp) / f"{i}.wav" for i in range(len(files))]
        run(decode_cmd(files, "g722", outs))
        return [sf.read(str(o), dtype="float32")[0] for o in outs]


def roundtrip(signals: Sequence[np.ndarray], codec: str) -> list[np.ndarray]:
    """Encode and decode 16 kHz float signals through ``codec``; the output keeps each input's length."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    return encode_decode(signals, *CODECS[codec])
