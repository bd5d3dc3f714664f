"""Audio front-ends in plain PyTorch: batched, device-agnostic and exportable to ONNX, and the registry
of every front-end (these and :class:`~ncdetect.data.whisper.WhisperFrontend`).

Every front-end maps ``wave: Tensor[B, T]`` (float32, 16 kHz) to ``Tensor[B, 1, F, frames]`` and has
``n_features`` (F), ``num_frames(num_samples)`` and ``config`` (the name and keyword arguments that
rebuild it; the feature store hashes it); the interface and the DSP they share are in
:mod:`~ncdetect.data.spectral`. Filterbanks, windows and DFT kernels are built once, as non-persistent
buffers, so they follow ``.to(device)`` but never enter a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import Registry
from .audio import SAMPLE_RATE
from .spectral import (  # noqa: F401  (re-exported: the front-end's public names live here as well)
    FilterBank,
    Frontend,
    PowerSpectrum,
    apply_bank,
    as_wave_batch,
    band_blocks,
    dct_matrix,
    linear_filterbank,
    mel_filterbank,
)
from .whisper import WhisperFrontend


# ------------------------------------------------------------------------------------------ front-ends
class LogMel(Frontend):
    """Log power mel spectrogram: ``log(max(mel, log_floor))``, natural log, Slaney mel filters.

    Numerically ``log(max(librosa.feature.melspectrogram(y, sr=16000, n_fft, hop_length, win_length,
    n_mels, fmin, fmax, power=2, center=True), log_floor))`` (see tests/test_frontends.py).
    """

    name = "logmel"
    shift_invariant = True  # up to the frames whose analysis window passes an edge
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
        self.hop_samples = hop_length
        self.log_floor = float(log_floor)
        self.spectrum = PowerSpectrum(n_fft, win_length, hop_length, pad_mode)
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
    shift_invariant = True  # up to the frames whose analysis window passes an edge
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
        self.hop_samples = hop_length
        self.spectrum = PowerSpectrum(n_fft, win_length, hop_length, pad_mode)
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
    shift_invariant = True

    def __init__(self, frame: int = 160) -> None:
        super().__init__(frame=frame)
        if frame < 1:
            raise ConfigError(f"frame must be >= 1, not {frame}")
        self.frame = frame
        self.n_features = frame
        self.hop_samples = frame

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
