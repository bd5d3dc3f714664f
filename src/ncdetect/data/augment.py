"""Training-time augmentation: RawBoost on the wave (in the loader workers), SpecAugment on the features.

Every random draw is keyed by ``(seed, epoch, utterance index)`` (:func:`aug_rng`), never by the batch an
utterance lands in, so a run gives the same augmentation whatever its number of processes or workers and
wherever a resumed run restarts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import RawBoostConfig, SpecAugmentConfig
from .audio import SAMPLE_RATE


def aug_rng(seed: int, epoch: int, index: int, salt: int) -> np.random.Generator:
    # Keyed by the utterance, not by the batch it lands in: the same draws whatever the number of
    # processes, workers or where a resumed run restarts. The salt separates it from the crop's stream.
    return np.random.default_rng([seed, epoch, index, salt])


def _fft_filter(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Causal FIR filtering ``lfilter(b, 1, x)`` via the FFT (taps can reach several hundred)."""
    n = len(x) + len(b) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(b, size), size)
    return y[: len(x)]


def _bandstop(f1: float, f2: float, taps: int, fs: int) -> np.ndarray:
    """Hamming-windowed-sinc band-stop FIR (as ``scipy.signal.firwin(taps, [f1, f2])``)."""
    n = np.arange(taps) - (taps - 1) / 2

    def lowpass(fc: float) -> np.ndarray:
        return 2 * fc / fs * np.sinc(2 * fc / fs * n)

    h = -(lowpass(f2) - lowpass(f1)) * np.hamming(taps)
    h[(taps - 1) // 2] += 1.0
    return h / h.sum()  # unity gain at DC, like firwin's scaling


def _notch_filter(
    rng: np.random.Generator, gain_db: tuple[float, float], fs: int = SAMPLE_RATE
) -> np.ndarray:
    """RawBoost's random multi-band filter: a cascade of 5 band-stops with random centre (20 Hz-8 kHz),
    bandwidth (100-1000 Hz) and length (10-100 taps), scaled to a random peak gain."""
    b = np.ones(1)
    for _ in range(5):
        fc, bw = rng.uniform(20, 8000), rng.uniform(100, 1000)
        taps = int(rng.integers(10, 101)) | 1  # odd length: a type-I filter can stop a band at Nyquist
        f1, f2 = max(fc - bw / 2, 1e-3), min(fc + bw / 2, fs / 2 - 1e-3)
        b = np.convolve(b, _bandstop(f1, f2, taps, fs))
    peak = np.abs(np.fft.rfft(b, 1024)).max()
    return 10 ** (rng.uniform(*gain_db) / 20) * b / max(peak, 1e-12)


def _peak_normalise(x: np.ndarray) -> np.ndarray:
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x


def rawboost(x: np.ndarray, rng: np.random.Generator, cfg: RawBoostConfig) -> np.ndarray:
    """RawBoost-style waveform augmentation (after Tak et al., ICASSP 2022), simplified but genuine.

    1: linear and non-linear convolutive noise: sum over j = 1..5 of a random FIR filter applied to x^j
       (the higher orders at 5-20 dB lower gain), mimicking channel and non-linear device distortion.
    2: impulsive signal-dependent noise: up to 10% of the samples get x[i] * g * u1 * u2 added
       (u uniform in [-1, 1], g = 2), like clipping and quantisation clicks.
    3: stationary signal-independent coloured noise: white noise through a random FIR filter, added at
       an SNR drawn from [snr_min, snr_max] dB.
    """
    x = x.astype(np.float64)
    peak_in = np.abs(x).max()
    for algo in cfg.algos:
        if algo == 1:
            y = np.zeros_like(x)
            for order in range(1, 6):
                gain = (0.0, 0.0) if order == 1 else (-5.0, -20.0)
                y += _fft_filter(_notch_filter(rng, (min(gain), max(gain))), x**order)
            x = _peak_normalise(y - y.mean())
        elif algo == 2:
            n = int(len(x) * rng.uniform(0, 10) / 100)
            pos = rng.permutation(len(x))[:n]
            f_r = (2 * rng.random(n) - 1) * (2 * rng.random(n) - 1)
            x = x.copy()
            x[pos] += 2.0 * x[pos] * f_r
            x = _peak_normalise(x)
        elif algo == 3:
            noise = _fft_filter(_notch_filter(rng, (0.0, 0.0)), rng.standard_normal(len(x)))
            snr = rng.uniform(cfg.snr_min, cfg.snr_max)
            scale = np.linalg.norm(x) / max(np.linalg.norm(noise), 1e-12) / 10 ** (snr / 20)
            x = x + scale * noise
    # Back to the input's peak level, so augmentation does not also become a loudness cue.
    return (_peak_normalise(x) * (peak_in if peak_in > 0 else 1.0)).astype(np.float32)


class RawBoostDataset(Dataset):
    """Applies :func:`rawboost` to the training waves inside the DataLoader workers."""

    def __init__(self, base: Any, cfg: RawBoostConfig, seed: int):
        self.base, self.cfg, self.seed = base, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        if item["wave"] is not None:
            rng = aug_rng(self.seed, self.base.epoch, int(index), 0xB0057)
            if rng.random() < self.cfg.p:
                item["wave"] = torch.from_numpy(rawboost(item["wave"].numpy(), rng, self.cfg))
        return item


def spec_augment(
    feats: torch.Tensor, indices: torch.Tensor, epoch: int, seed: int, cfg: SpecAugmentConfig
) -> torch.Tensor:
    """SpecAugment (Park et al. 2019): random frequency and time bands set to the utterance's mean."""
    b, _, n_freq, n_time = feats.shape
    mask = torch.zeros(b, n_freq, n_time, dtype=torch.bool)
    for row, index in enumerate(indices.tolist()):
        rng = aug_rng(seed, epoch, index, 0x5A)
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, min(cfg.freq_width, n_freq) + 1))
            f0 = int(rng.integers(0, n_freq - w + 1))
            mask[row, f0 : f0 + w, :] = True
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, min(cfg.time_width, n_time) + 1))
            t0 = int(rng.integers(0, n_time - w + 1))
            mask[row, :, t0 : t0 + w] = True
    fill = feats.mean(dim=(2, 3), keepdim=True)
    return torch.where(mask.to(feats.device).unsqueeze(1), fill, feats)
