"""Audio front-ends in plain PyTorch: batched, device-agnostic and exportable to ONNX.

Every front-end maps ``wave: Tensor[B, T]`` (float32, 16 kHz) to ``Tensor[B, 1, F, frames]`` and has
``n_features`` (F), ``num_frames(num_samples)`` and ``config`` (the name and keyword arguments that
rebuild it; the feature cache hashes it). Filterbanks, windows and DFT kernels are built once, as
non-persistent buffers, so they follow ``.to(device)`` but never enter a checkpoint.

The short-time power spectrum has two equivalent implementations:

* ``unfold`` + ``torch.fft.rfft`` (the default; the fastest on CPU in our measurements), and
* a ``conv1d`` with fixed windowed DFT kernels, used automatically while exporting to ONNX because the
  TorchScript ONNX exporter cannot export complex ``stft``/``rfft`` outputs. A convolution exports to
  every opset and runtime. ``tests/test_frontends.py`` checks that both agree.

Both follow ``librosa`` with ``center=True``: ``n_fft // 2`` samples of padding on each side (zeros by
default, ``pad_mode="constant"`` as in librosa >= 0.10) and a periodic Hann window of ``win_length``
centred in ``n_fft``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .whisper import WhisperFrontend

SAMPLE_RATE = 16_000


# ----------------------------------------------------------------------------------------- filterbanks
def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale (librosa's default, htk=False): linear below 1 kHz, log above.
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = hz >= min_log_hz
    mels = np.where(log_region, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def _triangles(fft_freqs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Triangular filters with corners ``edges[i], edges[i+1], edges[i+2]`` (librosa's construction)."""
    n = len(edges) - 2
    fdiff = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    weights = np.zeros((n, len(fft_freqs)))
    for i in range(n):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    return weights


def mel_filterbank(
    sr: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters, ``(n_mels, 1 + n_fft // 2)``; equals
    ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)``."""
    f_max = sr / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_pts = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    edges = _mel_to_hz_slaney(mel_pts)
    weights = _triangles(fft_freqs, edges)
    # Slaney normalisation: every filter has unit area, so wide high bands are not favoured.
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


def linear_filterbank(
    sr: int, n_fft: int, n_filters: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Unit-height triangular filters spaced evenly in Hz, ``(n_filters, 1 + n_fft // 2)``."""
    f_max = sr / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    edges = np.linspace(f_min, f_max, n_filters + 2)
    return _triangles(fft_freqs, edges).astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II as a ``(n_out, n_in)`` matrix (``scipy.fft.dct(type=2, norm="ortho")``)."""
    n = np.arange(n_in)
    k = np.arange(n_out)[:, None]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.astype(np.float32)


def band_blocks(filters: np.ndarray, n_blocks: int = 4) -> list[tuple[int, int, int, int]]:
    """Split a filterbank's rows into ``n_blocks`` runs, each with the frequency bins it touches:
    ``(row_start, row_stop, bin_start, bin_stop)``.

    Each filter covers a few neighbouring bins (80 mel filters hold 500 non-zero weights of 20,560),
    so a product with only each block's band of bins does a quarter of the multiply-adds of the
    dense product, with the same sums (the skipped weights are zeros).
    """
    rows = np.linspace(0, filters.shape[0], n_blocks + 1).round().astype(int)
    blocks = []
    for a, b in itertools.pairwise(rows):
        if a == b:
            continue
        cols = np.flatnonzero((filters[a:b] != 0).any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        blocks.append((int(a), int(b), lo, hi))
    return blocks


def apply_bank(
    filters: torch.Tensor, blocks: list[tuple[int, int, int, int]], power: torch.Tensor
) -> torch.Tensor:
    """``filters @ power`` for ``power: (B, n_freq, frames)``, block by block (see :func:`band_blocks`)."""
    if len(blocks) == 1:
        return torch.matmul(filters, power)
    return torch.cat([torch.matmul(filters[a:b, lo:hi], power[:, lo:hi]) for a, b, lo, hi in blocks], dim=1)


# ------------------------------------------------------------------------------------ base and STFT
def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def as_wave_batch(wave: torch.Tensor, who: str) -> torch.Tensor:
    """``(T,)``, ``(B, T)`` or ``(B, 1, T)`` as ``(B, T)``; any other shape is a ValueError naming ``who``."""
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    elif wave.dim() == 3 and wave.shape[1] == 1:
        wave = wave.squeeze(1)
    if wave.dim() != 2:
        raise ValueError(f"{who} expects a wave of shape (B, T), got {tuple(wave.shape)}")
    return wave


class Frontend(nn.Module):
    """Common interface; subclasses set ``name`` and ``n_features`` and implement ``_features``."""

    name = "frontend"
    n_features: int

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self._config = dict(config)

    @property
    def config(self) -> dict[str, Any]:
        """The registry name and keyword arguments that rebuild this front-end."""
        return {"name": self.name, **self._config}

    def num_frames(self, num_samples: int) -> int:
        raise NotImplementedError

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = as_wave_batch(wave, type(self).__name__)
        # Features are computed in float32 even inside an autocast region: log-power in float16 loses
        # the quiet bands and the DFT sums lose precision.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = wave.float()
            step = self._cpu_chunk(wave)
            if not step:
                return self._features(wave).unsqueeze(1)
            # The chunks share their scratch arrays (padded waves, frames): no page faults and no
            # zero-fills after the first chunk. Not under autograd, which refuses out= arguments.
            workspace = None if wave.requires_grad else {}
            first = self._features(wave[:step], workspace)
            out = first.new_empty((wave.shape[0], *first.shape[1:]))
            out[:step] = first
            for i in range(step, wave.shape[0], step):
                out[i : i + step] = self._features(wave[i : i + step], workspace)
            return out.unsqueeze(1)

    # Clips per chunk on a CPU: about this many STFT frames. A whole batch of 4 s clips makes frame and
    # spectrum arrays of ~50 MB that stream through main memory several times; chunks of ~2k frames
    # (3-4 MB) stay in the core's L2 cache, which makes the log-mel 1.5-2x faster on one thread.
    # GPUs want the whole batch at once, and export must not bake a batch split into the graph.
    cpu_chunk_frames: int | None = None

    def _cpu_chunk(self, wave: torch.Tensor) -> int:
        if self.cpu_chunk_frames is None or wave.device.type != "cpu" or _tracing():
            return 0
        step = max(1, self.cpu_chunk_frames // max(1, self.num_frames(wave.shape[-1])))
        return step if wave.shape[0] > step else 0

    def _features(self, wave: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        """``(B, T) -> (B, F, frames)``; ``workspace`` (a dict) lets successive calls reuse scratch arrays."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())


class _PowerSpectrum(nn.Module):
    """|STFT|^2 with ``center=True``, as ``(B, 1 + n_fft // 2, frames)``."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int, pad_mode: str = "constant") -> None:
        super().__init__()
        if win_length > n_fft:
            raise ConfigError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        if pad_mode not in ("constant", "reflect"):
            raise ConfigError(f"pad_mode must be 'constant' or 'reflect', not {pad_mode!r}")
        self.n_fft, self.win_length, self.hop_length, self.pad_mode = n_fft, win_length, hop_length, pad_mode
        self.n_freq = n_fft // 2 + 1
        self.win_offset = (n_fft - win_length) // 2
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
        self.register_buffer("window", F.pad(window, (self.win_offset, n_fft - win_length - self.win_offset))
                             .float(), persistent=False)
        # DFT kernels restricted to the window's support, for the ONNX-friendly convolution path.
        n = torch.arange(win_length, dtype=torch.float64) + self.win_offset
        k = torch.arange(self.n_freq, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        kernel = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window[None, :]
        self.register_buffer("dft_kernel", kernel.float().unsqueeze(1), persistent=False)
        self.use_conv = False  # force the convolution path (tests); export switches to it by itself

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.filtered(wave)

    def filtered(
        self, wave: torch.Tensor, bank: FilterBank | None = None, workspace: dict | None = None
    ) -> torch.Tensor:
        """The power spectrum ``(B, n_freq, frames)``, or ``bank`` applied to it: ``(B, n_filters, frames)``.

        ``workspace``: a dict in which calls on equally long waves keep and reuse their scratch arrays.
        """
        pad = self.n_fft // 2
        if self.pad_mode == "reflect":
            padded = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        elif workspace is not None:
            # The margins of the kept buffer stay zero: only the middle is ever written.
            padded = _scratch(workspace, "padded", (wave.shape[0], wave.shape[1] + 2 * pad), wave, zero=True)
            padded[:, pad : pad + wave.shape[1]] = wave
        else:
            padded = F.pad(wave, (pad, pad))
        if self.use_conv or torch.onnx.is_in_onnx_export():
            # Only the window's support matters: drop the zero taps at both ends of each frame.
            length = wave.shape[-1] + self.win_length
            x = padded[:, self.win_offset : self.win_offset + length].unsqueeze(1)
            spec = F.conv1d(x, self.dft_kernel, stride=self.hop_length)
            real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]
            power = real * real + imag * imag
            return power if bank is None else bank(power)
        framed = padded.unfold(-1, self.n_fft, self.hop_length)
        if workspace is not None:
            frames = torch.mul(framed, self.window, out=_scratch(workspace, "frames", framed.shape, wave))
        else:
            frames = framed * self.window
        spec = torch.fft.rfft(frames, dim=-1)
        if bank is None:
            # addcmul saves one temporary over re**2 + im**2 (the largest array of the whole front-end).
            return torch.addcmul(spec.real.square(), spec.imag, spec.imag).transpose(1, 2)
        # Square real and imaginary parts in place, as they lie (interleaved), and let the filterbank,
        # whose weights are interleaved the same way, add them: one contiguous pass over the spectrum
        # instead of the strided passes of re**2 + im**2.
        squares = torch.view_as_real(spec).square_().flatten(-2).transpose(1, 2)
        return bank(squares, interleaved=True)


def _scratch(
    workspace: dict, name: str, shape: tuple[int, ...], like: torch.Tensor, zero: bool = False
) -> torch.Tensor:
    """A kept array of ``shape`` (or the leading rows of a kept one with more rows)."""
    buf = workspace.get(name)
    shape = tuple(shape)
    if (buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.device != like.device
            or buf.dtype != like.dtype):
        buf = like.new_zeros(shape) if zero else like.new_empty(shape)
        workspace[name] = buf
    return buf[: shape[0]]


class FilterBank(nn.Module):
    """``filters @ power`` for ``power: (B, n_freq, frames)``, computed band by band (:func:`band_blocks`).

    ``interleaved=True`` takes ``(B, 2 * n_freq, frames)`` holding re**2 and im**2 of each bin in turn.
    """

    def __init__(self, filters: np.ndarray) -> None:
        super().__init__()
        pairs = np.repeat(filters, 2, axis=1)
        self.register_buffer("weights", torch.from_numpy(filters), persistent=False)
        self.register_buffer("pair_weights", torch.from_numpy(pairs), persistent=False)
        self.blocks = band_blocks(filters)
        self.pair_blocks = band_blocks(pairs)

    def forward(self, power: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
        if interleaved:
            return apply_bank(self.pair_weights, self.pair_blocks, power)
        return apply_bank(self.weights, self.blocks, power)


# ------------------------------------------------------------------------------------------ front-ends
class LogMel(Frontend):
    """Log power mel spectrogram: ``log(max(mel, log_floor))``, natural log, Slaney mel filters.

    Numerically ``log(max(librosa.feature.melspectrogram(y, sr=16000, n_fft, hop_length, win_length,
    n_mels, fmin, fmax, power=2, center=True), log_floor))`` (see tests/test_frontends.py).
    """

    name = "logmel"
    cpu_chunk_frames = 2048

    def __init__(
        self,
        n_mels: int = 80,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_floor: float = 1e-6,
        pad_mode: str = "constant",
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__(n_mels=n_mels, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                         f_min=f_min, f_max=f_max, log_floor=log_floor, pad_mode=pad_mode,
                         sample_rate=sample_rate)
        if log_floor <= 0:
            raise ConfigError(f"log_floor must be positive, not {log_floor}")
        self.n_features = n_mels
        self.log_floor = float(log_floor)
        self.spectrum = _PowerSpectrum(n_fft, win_length, hop_length, pad_mode)
        fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        self.register_buffer("filters", torch.from_numpy(fb), persistent=False)
        self.bank = FilterBank(fb)

    def num_frames(self, num_samples: int) -> int:
        return self.spectrum.num_frames(num_samples)

    def _features(self, wave: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        mel = self.spectrum.filtered(wave, self.bank, workspace)
        return torch.log(torch.clamp(mel, min=self.log_floor))


class LFCC(Frontend):
    """Linear-frequency cepstral coefficients with deltas and delta-deltas (F = 3 * n_lfcc).

    Defaults follow the ASVspoof LFCC baseline: 20 ms Hann window (320), 10 ms hop, 512-point FFT,
    20 linear triangular filters, 20 coefficients (DCT-II, orthonormal, of the log filter energies).
    Deltas use the regression formula over +-``delta_width`` frames with the edge frames repeated:
    d[t] = sum_n n * (c[t+n] - c[t-n]) / (2 * sum_n n^2).
    """

    name = "lfcc"
    cpu_chunk_frames = 2048

    def __init__(
        self,
        n_lfcc: int = 20,
        n_filters: int = 20,
        with_deltas: bool = True,
        n_fft: int = 512,
        win_length: int = 320,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_floor: float = 1e-6,
        delta_width: int = 2,
        pad_mode: str = "constant",
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__(n_lfcc=n_lfcc, n_filters=n_filters, with_deltas=with_deltas, n_fft=n_fft,
                         win_length=win_length, hop_length=hop_length, f_min=f_min, f_max=f_max,
                         log_floor=log_floor, delta_width=delta_width, pad_mode=pad_mode,
                         sample_rate=sample_rate)
        if n_lfcc > n_filters:
            raise ConfigError(f"n_lfcc ({n_lfcc}) must not exceed n_filters ({n_filters})")
        if delta_width < 1:
            raise ConfigError(f"delta_width must be >= 1, not {delta_width}")
        self.n_lfcc, self.with_deltas, self.delta_width = n_lfcc, with_deltas, delta_width
        self.log_floor = float(log_floor)
        self.n_features = n_lfcc * (3 if with_deltas else 1)
        self.spectrum = _PowerSpectrum(n_fft, win_length, hop_length, pad_mode)
        fb = linear_filterbank(sample_rate, n_fft, n_filters, f_min, f_max)
        self.register_buffer("filters", torch.from_numpy(fb), persistent=False)
        self.bank = FilterBank(fb)
        self.register_buffer("dct", torch.from_numpy(dct_matrix(n_filters, n_lfcc)), persistent=False)
        n = torch.arange(-delta_width, delta_width + 1, dtype=torch.float32)
        # conv1d correlates, so kernel[n] multiplies c[t + n]: exactly the regression formula.
        kernel = n / (2 * float((n[delta_width + 1 :] ** 2).sum()))
        self.register_buffer("delta_kernel", kernel.view(1, 1, -1).repeat(n_lfcc, 1, 1), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return self.spectrum.num_frames(num_samples)

    def delta(self, c: torch.Tensor) -> torch.Tensor:
        """Regression deltas along the last axis of ``c: (B, n_lfcc, frames)``."""
        padded = F.pad(c, (self.delta_width, self.delta_width), mode="replicate")
        return F.conv1d(padded, self.delta_kernel, groups=self.n_lfcc)

    def _features(self, wave: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        energies = self.spectrum.filtered(wave, self.bank, workspace)
        cep = torch.matmul(self.dct, torch.log(torch.clamp(energies, min=self.log_floor)))
        if not self.with_deltas:
            return cep
        d1 = self.delta(cep)
        return torch.cat([cep, d1, self.delta(d1)], dim=1)


class RawFrames(Frontend):
    """The waveform itself, cut into non-overlapping frames: ``F = frame``, ``frames = T // frame``
    (a trailing partial frame is dropped), so 2-D models can take raw audio."""

    name = "raw"

    def __init__(self, frame: int = 160) -> None:
        super().__init__(frame=frame)
        if frame < 1:
            raise ConfigError(f"frame must be >= 1, not {frame}")
        self.frame = frame
        self.n_features = frame

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.frame

    def _features(self, wave: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        n = wave.shape[-1] // self.frame
        return wave[:, : n * self.frame].reshape(wave.shape[0], n, self.frame).transpose(1, 2)


FRONTENDS: Registry[type[Frontend]] = Registry("front-end")
FRONTENDS.add("logmel", LogMel)
FRONTENDS.add("lfcc", LFCC)
FRONTENDS.add("raw", RawFrames)
FRONTENDS.add("whisper", WhisperFrontend)


def build_frontend(name: str, **kwargs: Any) -> Frontend:
    """Build a registered front-end; an unknown name or keyword is a :class:`ConfigError`."""
    cls = FRONTENDS.get(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(f"front-end {name!r}: {err}; valid keys are {valid}") from None
