"""LCNN: the light CNN of the ASVspoof 2019 LCNN baseline (Lavrentyeva et al., Interspeech 2019), built on
Max-Feature-Map activations (Wu et al. 2018): each convolution outputs twice the channels and MFM keeps the
elementwise maximum of the two halves, a competitive activation that acts as feature selection.

The convolutional part follows the baseline's layer table (conv 5x5, then 1x1 / 3x3 pairs with MFM,
BatchNorm and four 2x2 max-pools; MFM widths 32-48-64-32-32 at ``width=32``). Its two fully connected layers
(FC 160 -> MFM 80 -> FC 2) are replaced by the shared statistics pooling, embedding and head, so every
family exposes the same embedding. ``freq_pool`` defaults to ``"flatten"`` here: the baseline's first FC
layer sees every frequency position of the last map, and flattening keeps that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import SpoofModel, check_int
from .registry import register_model


class MFM(nn.Module):
    """Max-Feature-Map: split the channels in two halves and keep their elementwise maximum."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.chunk(x, 2, dim=1)
        return torch.maximum(a, b)


def conv_mfm(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """A convolution with ``2 * c_out`` outputs followed by MFM, leaving ``c_out`` channels."""
    return nn.Sequential(nn.Conv2d(c_in, 2 * c_out, kernel, padding=kernel // 2), MFM())


class LCNNTrunk(nn.Module):
    """``(B, 1, F, T)`` -> ``(B, width, F / 16, T / 16)``."""

    def __init__(self, width: int = 32):
        super().__init__()
        c1, c2, c3, c4, c5 = width, width * 3 // 2, width * 2, width, width
        self.features = nn.Sequential(
            conv_mfm(1, c1, 5),
            nn.MaxPool2d(2),
            conv_mfm(c1, c1, 1),
            nn.BatchNorm2d(c1),
            conv_mfm(c1, c2, 3),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c2),
            conv_mfm(c2, c2, 1),
            nn.BatchNorm2d(c2),
            conv_mfm(c2, c3, 3),
            nn.MaxPool2d(2),
            conv_mfm(c3, c3, 1),
            nn.BatchNorm2d(c3),
            conv_mfm(c3, c4, 3),
            nn.BatchNorm2d(c4),
            conv_mfm(c4, c4, 1),
            nn.BatchNorm2d(c4),
            conv_mfm(c4, c5, 3),
            nn.MaxPool2d(2),
        )
        self.out_channels = c5

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


@register_model("lcnn")
def lcnn(
    n_features: int,
    embedding_dim: int = 256,
    *,
    width: int = 32,
    freq_pool: str = "flatten",
) -> SpoofModel:
    return _build(n_features, embedding_dim, width, freq_pool)


def _build(n_features: int, embedding_dim: int, width: Any, freq_pool: str) -> SpoofModel:
    trunk = LCNNTrunk(check_int("width", width, minimum=2))
    return SpoofModel(trunk, n_features, embedding_dim, freq_pool=freq_pool, min_frames=16)
