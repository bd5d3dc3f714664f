"""The four spoof generators: two that read the prompt's text, two that re-synthesise its recording.

- ``espeak-ng``: formant synthesis of the text (voice en-us+f3 or es-419+f3).
- ``festival-kal``: festival's diphone voice ``voice_kal_diphone`` reading the text, with its F0 target
  raised into the bonafide speaker's range. It is an American English voice; on Spanish text it reads
  with English letter-to-sound rules, like a cross-lingual TTS attack.
- ``world``: WORLD analysis (DIO + StoneMask F0, CheapTrick envelope, D4C aperiodicity) and resynthesis.
- ``griffin-lim``: an 80-band mel spectrogram inverted to a linear magnitude (pseudo-inverse of the mel
  filter bank) and 32 Griffin-Lim iterations with a seeded initial phase.

All return float32 mono at 16 kHz and are deterministic for a given input (and seed).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import unicodedata
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..data.audio import SAMPLE_RATE
from ..errors import NcdetectError

TTS = ("espeak-ng", "festival-kal")
VOCODERS = ("world", "griffin-lim")
GENERATORS = TTS + VOCODERS

KAL_VOICE_DIR = Path("/usr/share/festival/voices/english/kal_diphone")

# Speaking rates chosen so that the synthetic speech lasts about as long as Allison's reading of the
# same text (median ratio near 1 on the trimmed speech), which keeps duration from being a class cue.
ESPEAK_RATE = {"en": 130, "es": 123}
FESTIVAL_STRETCH = {"en": 1.35, "es": 1.45}
FESTIVAL_F0 = (200, 30)  # target mean and standard deviation in Hz


def _need(binary: str, package: str) -> str:
    exe = shutil.which(binary)
    if exe is None:
        raise NcdetectError(
            f"{binary} not found; install the Debian package {package} (`sudo apt-get install {package}` "
            "or `make demo`)"
        )
    return exe


def check_generators() -> None:
    """Raise a clear error when a synthesiser or a Python extra is missing."""
    _need("espeak-ng", "espeak-ng")
    _need("festival", "festival")
    if not (KAL_VOICE_DIR / "festvox" / "kal_diphone.scm").is_file():
        raise NcdetectError(
            f"{KAL_VOICE_DIR}: festival voice not found; install the Debian package festvox-kallpc16k "
            "(`sudo apt-get install festvox-kallpc16k` or `make demo`)"
        )
    for module in ("librosa", "pyworld"):
        try:
            _import(module)
        except ImportError:
            raise NcdetectError(
                f"Python package {module} not found; install the demo extra (`pip install 'ncdetect[demo]'`)"
            ) from None


def _import(module: str):
    with warnings.catch_warnings():
        # pyworld 0.3 imports pkg_resources, which warns on import; the pin setuptools<81 keeps it working.
        warnings.simplefilter("ignore")
        return __import__(module)


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = soxr.resample(x, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return x


def espeak(texts: Sequence[str], language: str, voice: str) -> list[np.ndarray]:
    exe = _need("espeak-ng", "espeak-ng")
    out = []
    with tempfile.TemporaryDirectory(prefix="ncdetect-espeak-") as tmp:
        for i, text in enumerate(texts):
            wav = Path(tmp) / f"{i}.wav"
            cmd = [exe, "-v", voice, "-s", str(ESPEAK_RATE[language]), "-w", str(wav), "--stdin"]
            proc = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not wav.is_file():
                raise NcdetectError(f"espeak-ng failed on {text[:40]!r}: {proc.stderr.strip()[:200]}")
            x, sr = sf.read(str(wav), dtype="float32")
            out.append(_to_16k(x, sr))
    return out


def _scheme_string(text: str) -> str:
    # festival's English front end reads ASCII; accents are folded (é -> e) rather than dropped whole.
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return '"' + ascii_text.replace("\\", " ").replace('"', " ") + '"'


def festival(texts: Sequence[str], language: str) -> list[np.ndarray]:
    """One festival process synthesises the whole batch (loading the voice costs more than a prompt)."""
    exe = _need("festival", "festival")
    mean, std = FESTIVAL_F0
    with tempfile.TemporaryDirectory(prefix="ncdetect-festival-") as tmp:
        root = Path(tmp)
        lines = [
            "(voice_kal_diphone)",
            f"(set! int_lr_params '((target_f0_mean {mean}) (target_f0_std {std}) "
            "(model_f0_mean 170) (model_f0_std 34)))",
            f"(Parameter.set 'Duration_Stretch {FESTIVAL_STRETCH[language]})",
        ]
        wavs = [root / f"{i}.wav" for i in range(len(texts))]
        for text, wav in zip(texts, wavs, strict=True):
            utterance = f"(utt.synth (Utterance Text {_scheme_string(text)}))"
            lines.append(f"(utt.save.wave {utterance} \"{wav}\" 'riff)")
        script = root / "batch.scm"
        script.write_text("\n".join(lines) + "\n", encoding="ascii")
        proc = subprocess.run([exe, "--batch", str(script)], capture_output=True, text=True, check=False)
        out = []
        for text, wav in zip(texts, wavs, strict=True):
            if not wav.is_file():
                raise NcdetectError(f"festival failed on {text[:40]!r}: {proc.stderr.strip()[-200:]}")
            x, sr = sf.read(str(wav), dtype="float32")
            out.append(_to_16k(x, sr))
    return out


def world(x: np.ndarray) -> np.ndarray:
    pw = _import("pyworld")
    xd = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pw.dio(xd, SAMPLE_RATE, frame_period=5.0)
    f0 = pw.stonemask(xd, f0, t, SAMPLE_RATE)
    sp = pw.cheaptrick(xd, f0, t, SAMPLE_RATE)
    ap = pw.d4c(xd, f0, t, SAMPLE_RATE)
    y = pw.synthesize(f0, sp, ap, SAMPLE_RATE, 5.0)
    return _fit(y.astype(np.float32), len(x))


N_FFT, HOP, N_MELS, GL_ITERS = 1024, 256, 80, 32


@lru_cache(maxsize=1)
def _mel_pinv() -> np.ndarray:
    librosa = _import("librosa")
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmax=SAMPLE_RATE / 2)
    return np.linalg.pinv(basis).astype(np.float32)


def griffin_lim(x: np.ndarray, seed: int) -> np.ndarray:
    librosa = _import("librosa")
    mel = librosa.feature.melspectrogram(
        y=np.asarray(x, dtype=np.float32), sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
        fmax=SAMPLE_RATE / 2,
    )
    mag = np.sqrt(np.maximum(_mel_pinv() @ mel, 0.0))
    y = librosa.griffinlim(
        mag, n_iter=GL_ITERS, hop_length=HOP, n_fft=N_FFT, random_state=seed, length=len(x)
    )
    return np.asarray(y, dtype=np.float32)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])
