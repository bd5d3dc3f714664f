"""ConvNeXt family over spectrograms: ``convnext_atto`` and ``convnext_femto`` (Liu et al. 2022; the small
variants follow timm's definitions).

Kept as in the paper: a 4x4 stride-4 patchify stem, 2x2 stride-2 downsampling between stages, blocks of
depthwise 7x7 conv -> LayerNorm -> Linear(4x) -> GELU -> Linear -> layer scale (init 1e-6) -> stochastic
depth, and a final LayerNorm (timm puts it in the head; here it ends the trunk so the shared pooling sees
normalised features). The input has one channel instead of three. Stochastic depth rises linearly from 0
in the first block to ``drop_path`` in the last; the default 0.1 (timm trains these sizes with 0-0.1)
regularises the small corpora this toolkit trains on.

A 4 s log-mel (80 x 401) leaves stage 4 a 2 x 12 map, so the family needs at least 32 frames and 32
frequency rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DropPath, SpoofModel, check_float, check_ints
from .registry import register_model


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # channels-last so LayerNorm and the Linears act on C
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class ConvNeXtTrunk(nn.Module):
    """``(B, 1, F, T)`` -> ``(B, dims[-1], F / 32, T / 32)``."""

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
    ):
        super().__init__()
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(1, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        )
        for i in range(1, len(dims)):
            self.downsample.append(
                nn.Sequential(
                    LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2)
                )
            )
        total = sum(depths)
        rates = [drop_path * i / (total - 1) if total > 1 else drop_path for i in range(total)]
        self.stages = nn.ModuleList()
        k = 0
        for dim, depth in zip(dims, depths, strict=True):
            self.stages.append(
                nn.Sequential(*[ConvNeXtBlock(dim, rates[k + j], layer_scale_init) for j in range(depth)])
            )
            k += depth
        self.norm = LayerNorm2d(dims[-1], eps=1e-6)
        self.out_channels = dims[-1]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample, self.stages, strict=True):
            x = stage(down(x))
        return self.norm(x)


def build_convnext(
    n_features: int,
    embedding_dim: int,
    depths: Any,
    dims: Any,
    drop_path: Any,
    layer_scale_init: Any,
    freq_pool: str,
) -> SpoofModel:
    trunk = ConvNeXtTrunk(
        check_ints("depths", depths, 4),
        check_ints("dims", dims, 4),
        check_float("drop_path", drop_path, 0.0, 1.0),
        check_float("layer_scale_init", layer_scale_init, 0.0, float("inf")),
    )
    return SpoofModel(trunk, n_features, embedding_dim, freq_pool=freq_pool, min_frames=32)


@register_model("convnext_atto")
def convnext_atto(
    n_features: int,
    embedding_dim: int = 256,
    *,
    depths: tuple[int, ...] = (2, 2, 6, 2),
    dims: tuple[int, ...] = (40, 80, 160, 320),
    drop_path: float = 0.1,
    layer_scale_init: float = 1e-6,
    freq_pool: str = "mean",
) -> SpoofModel:
    return build_convnext(n_features, embedding_dim, depths, dims, drop_path, layer_scale_init, freq_pool)


@register_model("convnext_femto")
def convnext_femto(
    n_features: int,
    embedding_dim: int = 256,
    *,
    depths: tuple[int, ...] = (2, 2, 6, 2),
    dims: tuple[int, ...] = (48, 96, 192, 384),
    drop_path: float = 0.1,
    layer_scale_init: float = 1e-6,
    freq_pool: str = "mean",
) -> SpoofModel:
    return build_convnext(n_features, embedding_dim, depths, dims, drop_path, layer_scale_init, freq_pool)
