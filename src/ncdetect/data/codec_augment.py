"""Codec and channel augmentation of the training audio (``augment.codec``), rendered once into the cache.

Each augmented copy of a window passes, in the order a real call or upload does:

1. a random low- or high-pass (the microphone and the handset band; Butterworth, order 4),
2. additive coloured noise (``1/f^a``, ``a`` in [0, 2]) at a random SNR (the room),
3. a codec round trip through ffmpeg: MP3 8-64 kbit/s, Opus 6-24 kbit/s, GSM-FR, G.722, or G.711
   mu-law / A-law, the last three narrowband ones at 8 kHz, so they band-limit to 4 kHz as a telephone does,
4. packet loss: 20 ms packets dropped at a random rate of 1-10%, each lost packet silenced or, half of
   the time, replaced by the previous one (the simplest concealment),

then goes back to the input's peak level, so the augmentation does not become a loudness cue. Each stage
is applied with its own probability; RawBoost (``augment.rawboost``) is separate and unchanged.

Encoding through ffmpeg per sample is slow, so the feature store (:mod:`ncdetect.data.features`) renders
``K`` (``augment.codec.variants``) copies of the training windows at build time, stores their front-end
output beside the clean rows, and training draws one per epoch. The copies are a pure function of
``(augment.codec.seed, utterance, k)``: a rebuild gives the same audio, whatever the manifest order. One
ffmpeg process encodes every window that shares a codec setting (bit rates are drawn from a fixed set of
steps so the groups stay large), and the groups run in a few threads.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..config import CodecAugmentConfig
from ..errors import NcdetectError
from .audio import SAMPLE_RATE
from .ffmpeg import encode_decode

MP3_KBPS = (8, 16, 24, 32, 48, 64)
OPUS_KBPS = (6, 8, 12, 16, 24)
PACKET_SECONDS = 0.02
SALT = 0xC0DEC

# codec -> (encoder arguments for a bit rate, container, sample rate on the wire, delay in samples at 16 kHz).
# G.722's delay is that of its QMF filters (see demo/channel.py), removed to keep the copies aligned.
_CODECS = {
    "mp3": (lambda kbps: ["-c:a", "libmp3lame", "-b:a", f"{kbps}k"], "mp3", 16_000, 0),
    "opus": (lambda kbps: ["-c:a", "libopus", "-b:a", f"{kbps}k", "-application", "voip"], "ogg", 16_000, 0),
    "gsm": (lambda kbps: ["-c:a", "libgsm"], "gsm", 8_000, 0),
    "g722": (lambda kbps: ["-c:a", "g722"], "g722", 16_000, 22),
    "mulaw": (lambda kbps: ["-c:a", "pcm_mulaw"], "wav", 8_000, 0),
    "alaw": (lambda kbps: ["-c:a", "pcm_alaw"], "wav", 8_000, 0),
}
CODECS = tuple(_CODECS)


@dataclass(frozen=True)
class Variant:
    """The draws of one augmented copy; ``None`` (or 0) leaves a stage out."""

    codec: str | None = None
    kbps: int | None = None
    filter: tuple[str, float] | None = None  # ("lowpass" | "highpass", cutoff in Hz)
    snr_db: float | None = None
    noise_slope: float = 0.0
    loss_rate: float = 0.0
    seed: int = 0  # noise and packet-loss realisation

    def describe(self) -> str:
        parts = [f"{self.codec}{f'-{self.kbps}k' if self.kbps else ''}" if self.codec else "no codec"]
        if self.filter:
            parts.append(f"{self.filter[0]} {self.filter[1]:.0f} Hz")
        if self.snr_db is not None:
            parts.append(f"noise {self.snr_db:.1f} dB")
        if self.loss_rate:
            parts.append(f"loss {100 * self.loss_rate:.1f}%")
        return ", ".join(parts)


def utterance_key(utt_id: str, path: str) -> int:
    """A stable integer for an utterance (its id, else its path): the same copies in any manifest order."""
    return int.from_bytes(hashlib.sha256((utt_id or path).encode()).digest()[:8], "little")


def draw_variant(cfg: CodecAugmentConfig, utt_key: int, k: int) -> Variant:
    """The ``k``-th copy's draws for one utterance: a pure function of ``(cfg.seed, utt_key, k)``."""
    rng = np.random.default_rng([cfg.seed, utt_key, k, SALT])
    codec = kbps = filt = snr = None
    slope = loss = 0.0
    if cfg.codecs and rng.random() < cfg.p_codec:
        codec = str(cfg.codecs[int(rng.integers(len(cfg.codecs)))])
        if codec == "mp3":
            kbps = int(rng.choice(MP3_KBPS))
        elif codec == "opus":
            kbps = int(rng.choice(OPUS_KBPS))
    if rng.random() < cfg.p_filter:
        filt = ("lowpass", float(rng.uniform(2500, 7000))) if rng.random() < 0.5 else \
            ("highpass", float(rng.uniform(50, 500)))
    if rng.random() < cfg.p_noise:
        snr, slope = float(rng.uniform(cfg.snr_min, cfg.snr_max)), float(rng.uniform(0, 2))
    if rng.random() < cfg.p_packet_loss:
        loss = float(rng.uniform(0.01, cfg.max_loss))
    return Variant(codec, kbps, filt, snr, slope, loss, int(rng.integers(2**31)))


# ---------------------------------------------------------------------------------------------- stages
def band_filter(x: np.ndarray, kind: str, cutoff: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, cutoff, btype=kind, fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, x).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ``1/f^slope`` added at ``snr_db`` below the signal's power."""
    spec = np.fft.rfft(rng.standard_normal(len(x)))
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    spec *= np.maximum(freqs, 20.0) ** (-slope / 2)
    noise = np.fft.irfft(spec, len(x))
    scale = np.linalg.norm(x) / max(np.linalg.norm(noise), 1e-12) / 10 ** (snr_db / 20)
    return (x + scale * noise).astype(np.float32)


def packet_loss(x: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Drop 20 ms packets with probability ``rate``: silence, or the previous packet repeated."""
    n = round(PACKET_SECONDS * SAMPLE_RATE)
    y = x.copy()
    lost = np.flatnonzero(rng.random(len(x) // n + 1) < rate)
    repeat = rng.random(len(lost)) < 0.5
    for p, rep in zip(lost, repeat, strict=True):
        a, b = p * n, min(len(x), (p + 1) * n)
        if a >= b:
            continue
        y[a:b] = y[a - n : b - n] if rep and a >= n else 0.0
    return y


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise NcdetectError(f"codec augmentation: ffmpeg failed ({tail}); needs an ffmpeg with libmp3lame, "
                            "libopus and libgsm (Debian's ffmpeg)")


def codec_roundtrip(signals: Sequence[np.ndarray], codec: str, kbps: int | None = None) -> list[np.ndarray]:
    """Encode and decode 16 kHz float signals through one codec setting in one pair of ffmpeg calls;
    each output keeps its input's length."""
    if codec not in _CODECS:
        raise NcdetectError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    args, container, wire_sr, delay = _CODECS[codec]
    return encode_decode(signals, args(kbps), container, wire_sr, delay, runner=_run)


def render(signals: Sequence[np.ndarray], variants: Sequence[Variant], threads: int = 2) -> list[np.ndarray]:
    """Apply each variant to its signal (16 kHz float32); one ffmpeg pair per distinct codec setting."""
    if len(signals) != len(variants):
        raise ValueError(f"{len(signals)} signals but {len(variants)} variants")
    out: list[np.ndarray] = []
    for x, v in zip(signals, variants, strict=True):
        y = np.asarray(x, dtype=np.float32)
        if v.filter is not None:
            y = band_filter(y, *v.filter)
        if v.snr_db is not None:
            y = add_noise(y, v.snr_db, v.noise_slope, np.random.default_rng([v.seed, 1]))
        out.append(y)
    groups: dict[tuple[str, int | None], list[int]] = defaultdict(list)
    for i, v in enumerate(variants):
        if v.codec is not None:
            groups[(v.codec, v.kbps)].append(i)
    if groups:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            jobs = {key: pool.submit(codec_roundtrip, [out[i] for i in idx], *key)
                    for key, idx in groups.items()}
            for key, job in jobs.items():
                for i, y in zip(groups[key], job.result(), strict=True):
                    out[i] = y
    for i, (x, v) in enumerate(zip(signals, variants, strict=True)):
        y = out[i]
        if v.loss_rate:
            y = packet_loss(y, v.loss_rate, np.random.default_rng([v.seed, 2]))
        peak_in, peak = float(np.abs(x).max()), float(np.abs(y).max())
        out[i] = (y * (peak_in / peak) if peak > 0 and peak_in > 0 else y).astype(np.float32)
    return out
