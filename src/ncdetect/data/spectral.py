"""The pieces every front-end shares: the DSP (short-time power spectrum, filter banks, the mel and
linear scales, the DCT), the wave-shape check and the :class:`Frontend` interface itself.

Kept apart from :mod:`~ncdetect.data.frontends` (log-mel, LFCC, raw and the registry) and
:mod:`~ncdetect.data.whisper`, so that both import from here and neither imports the other.

The short-time power spectrum has two equivalent implementations:

* ``unfold`` + ``torch.fft.rfft`` (the default; the fastest on CPU in our measurements), and
* a ``conv1d`` with fixed windowed DFT kernels, used automatically while exporting to ONNX because the
  TorchScript ONNX exporter cannot export complex ``stft``/``rfft`` outputs. A convolution exports to
  every opset and runtime. ``tests/test_frontends.py`` checks that both agree.

Both follow ``librosa`` with ``center=True``: ``n_fft // 2`` samples of padding on each side (zeros by
default, ``pad_mode="constant"`` as in librosa >= 0.10, or ``"reflect"`` as Whisper pads) and a periodic
Hann window of ``win_length`` centred in ``n_fft``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


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


class PowerSpectrum(nn.Module):
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


# Windows each front-end identity has encoded in this process (see :func:`windows_encoded`).
_ENCODED: Counter[str] = Counter()


def frontend_key(frontend: Frontend) -> str:
    """A short digest of ``frontend.cache_identity``: the front-end's identity in the feature store."""
    key = frontend.__dict__.get("_identity_key")
    if key is None:
        blob = json.dumps(frontend.cache_identity, sort_keys=True, default=str).encode()
        key = hashlib.sha256(blob).hexdigest()[:12]
        frontend.__dict__["_identity_key"] = key
    return key


def windows_encoded() -> dict[str, int]:
    """``{"<name>-<identity>": windows}``: every window a front-end has encoded in this process so far
    (every ``forward``, whether for the feature store, training on waves or scoring). The pipeline records
    the growth over each stage to report how much encoding the feature store saved."""
    return dict(_ENCODED)


class Frontend(nn.Module):
    """Common interface; subclasses set ``name`` and ``n_features`` and implement ``_features``.

    Every front-end maps ``wave: Tensor[B, T]`` (float32, 16 kHz) to ``Tensor[B, 1, F, frames]`` and has
    ``n_features`` (F), ``num_frames(num_samples)`` and ``config`` (the name and keyword arguments that
    rebuild it).

    Class attributes the feature store reads:

    * ``shift_invariant``: whether frames ``[a, a + n)`` of the encoding of a longer wave equal the
      encoding of the samples those frames cover (up to the frames whose analysis window reaches past
      either edge), for a crop that starts on a hop. True for STFT front-ends and raw frames; False
      where the output depends on the whole input (Whisper: positional embeddings, attention, a clamp at
      the input's own maximum). The store encodes every window of a front-end that is not on its own.
    * ``hop_samples``: the samples per output frame (crops start on multiples of it).
    * ``cache_dtype``: the dtype the store keeps (float32 unless a front-end says otherwise).
    * ``exportable``: whether ``ncdetect export`` can write it to ONNX.
    """

    name = "frontend"
    n_features: int
    shift_invariant = False
    hop_samples = 1
    cache_dtype = "float32"
    exportable = True

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self._config = dict(config)

    @property
    def config(self) -> dict[str, Any]:
        """The registry name and keyword arguments that rebuild this front-end."""
        return {"name": self.name, **self._config}

    @property
    def cache_identity(self) -> dict[str, Any]:
        """What the feature store hashes for this front-end: its config, plus whatever it loads."""
        return self.config

    def num_frames(self, num_samples: int) -> int:
        raise NotImplementedError

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = as_wave_batch(wave, type(self).__name__)
        if not _tracing():
            _ENCODED[f"{self.name}-{frontend_key(self)}"] += int(wave.shape[0])
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
