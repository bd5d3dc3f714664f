"""Audio input: anything libsndfile reads (wav, flac, ogg, mp3), mixed to mono, resampled to 16 kHz.

Only the frames that are needed are read, so a window of a one-hour file costs a window's worth of I/O,
and reads go in blocks, so a header that declares a huge length cannot make us allocate it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 64_600  # ~4 s, the AASIST convention
MAX_PEAK = 1_000.0  # float audio beyond this is garbage, not loud speech
# Header rates outside this range are corrupt headers, not recordings. The floor also bounds what resampling
# can allocate: a "1 Hz" header on an hour of audio would upsample it 16,000-fold.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
_BLOCK_FRAMES = 1 << 18


def _open(path: str | Path) -> sf.SoundFile:
    p = Path(path)
    try:
        if not p.exists():
            raise AudioError(path, "file not found")
        if p.is_dir():
            raise AudioError(path, "is a folder, not an audio file")
        if not p.is_file():
            # A FIFO or device would block the reader forever.
            raise AudioError(path, "not a regular file")
        if p.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)")
        f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"not a readable audio file ({_short(err)})") from None
    except OSError as err:
        raise AudioError(path, f"cannot be read ({err.strerror or err})") from None
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        f.close()
        raise AudioError(
            path,
            f"sample rate {f.samplerate} Hz in the header is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
            "(corrupt header?)",
        )
    return f


def _short(err: Exception) -> str:
    return str(err).splitlines()[0].replace(str(getattr(err, "filename", "")), "").strip(" :") or type(
        err
    ).__name__


def audio_duration(path: str | Path) -> float:
    """Duration in seconds, from the header alone."""
    with _open(path) as f:
        return f.frames / f.samplerate


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    ``offset`` and ``duration`` (seconds) bound what is read from disk. Raises :class:`AudioError`
    naming the file for anything unusable: missing, empty, a folder, corrupt or truncated, not audio,
    zero length, NaN or Inf, float samples beyond +-``MAX_PEAK``, or (when the whole file was read)
    all zeros. A window of zeros inside a longer file is valid audio.
    """
    with _open(path) as f:
        return _decode(f, path, sample_rate, offset, duration)


def load_crop(
    path: str | Path, num_samples: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A random window of ``num_samples`` at ``sample_rate``, or the whole clip when it is not longer.

    The same draw and the same samples as ``audio_duration`` followed by ``load_audio(offset, duration)``,
    with one open of the file instead of two (a training epoch opens every file once).
    """
    with _open(path) as f:
        total = int(f.frames / f.samplerate * sample_rate)
        if total > num_samples:
            start = int(rng.integers(0, total - num_samples + 1))
            return _decode(f, path, sample_rate, start / sample_rate, num_samples / sample_rate)
        return _decode(f, path, sample_rate, 0.0, None)


def _decode(
    f: sf.SoundFile, path: str | Path, sample_rate: int, offset: float, duration: float | None
) -> np.ndarray:
    """The body of :func:`load_audio` on an open file."""
    sr_in = f.samplerate  # within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]: checked by _open
    total = f.frames
    start = min(max(0, round(offset * sr_in)), max(total, 0))
    want = None if duration is None else math.ceil(duration * sr_in) + 1
    try:
        f.seek(start)
        mono = _read_mono(f, want)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(path, f"corrupt or truncated audio ({_short(err)})") from None
    except MemoryError:
        raise AudioError(path, "too long to decode in memory; read it in windows") from None
    if mono.size == 0:
        raise AudioError(path, "no audio samples (length 0)")
    if not np.isfinite(mono).all():
        raise AudioError(path, "audio holds NaN or Inf samples")
    peak = float(np.max(np.abs(mono)))
    if peak > MAX_PEAK:
        # Only float formats can hold such values; squared in a spectrum they overflow float32.
        raise AudioError(path, f"sample values out of range (peak {peak:.3g}; expected within [-1, 1])")
    whole_file = start == 0 and (want is None or want >= total)
    if whole_file and peak == 0.0:
        raise AudioError(path, "audio is all zeros")
    if sr_in != sample_rate:
        mono = soxr.resample(mono, sr_in, sample_rate, quality="HQ").astype(np.float32, copy=False)
    if duration is not None:
        mono = mono[: round(duration * sample_rate)]
    if mono.size == 0:
        # The samples read were fewer than one at ``sample_rate``: e.g. 1 sample at 81,536 Hz, or a window
        # shorter than one output sample.
        raise AudioError(path, f"no audio samples at {sample_rate} Hz (length 0 after resampling)")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _read_mono(f: sf.SoundFile, want: int | None) -> np.ndarray:
    """Read up to ``want`` frames (all when None) in blocks, mixing each block to mono.

    Blocks bound the memory by what the file really holds: a header may declare far more frames than
    the data contains, and a single ``read()`` would allocate the declared length up front.
    """
    blocks: list[np.ndarray] = []
    remaining = want
    while remaining is None or remaining > 0:
        n = _BLOCK_FRAMES if remaining is None else min(_BLOCK_FRAMES, remaining)
        # Mono is read as 1-D: no copy out of a (n, 1) array for the common case.
        data = f.read(frames=n, dtype="float32", always_2d=f.channels > 1)
        if len(data) == 0:
            break
        blocks.append(data.mean(axis=1, dtype=np.float32) if data.ndim > 1 else data)
        if remaining is not None:
            remaining -= len(data)
        if len(data) < n:
            break
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def tile_pad(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeat a short clip until it fills ``num_samples`` (the AASIST convention)."""
    if len(x) >= num_samples:
        return x[:num_samples]
    reps = math.ceil(num_samples / max(len(x), 1))
    return np.tile(x, reps)[:num_samples]


def first_window(x: np.ndarray, num_samples: int = WINDOW_SAMPLES) -> np.ndarray:
    """Evaluation window: the first ``num_samples``, tile-padded when the clip is shorter."""
    return tile_pad(x, num_samples)


def random_crop(x: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Training window: a random crop, tile-padded when the clip is shorter."""
    if len(x) <= num_samples:
        return tile_pad(x, num_samples)
    start = int(rng.integers(0, len(x) - num_samples + 1))
    return x[start : start + num_samples]


def trim_silence(x: np.ndarray, top_db: float = 40.0, frame: int = 400, hop: int = 160) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``top_db`` below the loudest frame."""
    if len(x) < frame:
        return x
    n_frames = 1 + (len(x) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n_frames)[:, None]
    rms = np.sqrt(np.mean(x[idx] ** 2, axis=1) + 1e-20)
    db = 20 * np.log10(rms / rms.max())
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return x
    return x[loud[0] * hop : min(len(x), loud[-1] * hop + frame)]
