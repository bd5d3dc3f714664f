"""Equalisation: every clip, bonafide or spoof, goes through the same steps with draws from the same
distributions, so that silence, loudness, codec and bandwidth say nothing about the label.

1. DC removed, leading and trailing silence trimmed by one rule (frames more than 40 dB below the
   loudest frame, :func:`ncdetect.data.audio.trim_silence`).
2. Padded with a random lead and trail (uniform 0.1-0.5 s each).
3. A white noise floor added over the whole clip at a random depth (uniform 45-60 dB below the
   loudest 25 ms frame): it hides the digital silence between a synthesiser's words and the room tone
   between a speaker's, and makes the padding look like any other pause. It is set against the loudest
   frame, not the speech RMS, because synthetic speech has more low-level frames (silent gaps between
   words) and so a lower RMS for the same peak: an RMS-relative floor would sit closer to the peak for
   bonafide clips and the padding would stop counting as silence for them more often.
4. Band-limited to the G.722 wideband channel, 50-7000 Hz (zero-phase Butterworth filters): ffmpeg's
   G.722 codec passes up to 8 kHz, while the prompts were recorded for the 7 kHz band, so without this
   a synthesiser's 7-8 kHz content would mark its clips.
5. RMS-normalised to a random level (uniform -32..-24 dBFS over the whole clip).
6. Passed through G.722 (encode and decode with ffmpeg), the codec of the bonafide prompts.
7. Target clips only: a channel codec drawn at random, whatever the label (none, MP3 32 kbit/s, GSM
   at 8 kHz, Opus 12 kbit/s).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import butter, sosfiltfilt

from ..data.audio import SAMPLE_RATE, trim_silence

TRIM_TOP_DB = 40.0
PAD_SECONDS = (0.1, 0.5)
FLOOR_DB = (45.0, 60.0)
RMS_DBFS = (-32.0, -24.0)
BAND_HZ = (50.0, 7000.0)
CHANNEL_CODECS = ("none", "mp3-32k", "gsm", "opus-12k")


@dataclass(frozen=True)
class Draws:
    lead_s: float
    trail_s: float
    floor_db: float
    rms_dbfs: float
    codec: str
    noise_seed: int


def clip_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on the corpus seed and the clip, not on the processing order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def draw(seed: int, utt_id: str, with_codec: bool) -> Draws:
    rng = clip_rng(seed, utt_id)
    lead, trail = rng.uniform(*PAD_SECONDS, size=2)
    floor = rng.uniform(*FLOOR_DB)
    level = rng.uniform(*RMS_DBFS)
    codec = str(rng.choice(CHANNEL_CODECS)) if with_codec else "none"
    return Draws(float(lead), float(trail), float(floor), float(level), codec, int(rng.integers(2**31)))


@lru_cache(maxsize=1)
def _band() -> np.ndarray:
    low = butter(4, BAND_HZ[0], btype="highpass", fs=SAMPLE_RATE, output="sos")
    high = butter(10, BAND_HZ[1], btype="lowpass", fs=SAMPLE_RATE, output="sos")
    return np.concatenate([low, high])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def loudest_frame_rms(x: np.ndarray, frame: int = 400, hop: int = 160) -> float:
    if len(x) < frame:
        return rms(x)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    return float(np.sqrt(np.max(np.mean(np.square(frames), axis=1)) + 1e-20))


def equalise(x: np.ndarray, d: Draws) -> np.ndarray:
    """Steps 1-5 above; the codecs (6, 7) run in batches through ffmpeg afterwards."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    speech = trim_silence(x, top_db=TRIM_TOP_DB)
    peak = loudest_frame_rms(speech)
    lead, trail = np.zeros(int(d.lead_s * SAMPLE_RATE)), np.zeros(int(d.trail_s * SAMPLE_RATE))
    y = np.concatenate([lead, speech, trail])
    noise = np.random.default_rng(d.noise_seed).standard_normal(len(y))
    y = y + noise * peak * 10 ** (-d.floor_db / 20)
    y = sosfiltfilt(_band(), y)
    y = y * (10 ** (d.rms_dbfs / 20) / rms(y))
    return y.astype(np.float32)
