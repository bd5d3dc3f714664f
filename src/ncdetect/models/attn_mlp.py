"""``attn_mlp``: a frame-wise MLP with attentive statistics pooling, the small head for sequence front-ends.

Meant for the frozen Whisper encoder (``frontend: whisper``), whose 384-dimensional frames already carry
what a convolution stack would have to learn from a spectrogram; it takes any ``(B, 1, F, T)`` input.

* per frame: ``LayerNorm(F) -> [Linear -> GELU -> Dropout] x depth`` to ``hidden`` channels (the layer
  norm evens out the few large-magnitude dimensions of a transformer's output);
* attentive statistics pooling (Okabe et al., Interspeech 2018): a scalar score per frame from
  ``Linear -> tanh -> Linear``, softmax over time, then the attention-weighted mean and standard
  deviation, concatenated to ``2 * hidden``;
* then the shared embedding and head of :class:`~ncdetect.models.base.SpoofModel`.

About 0.33 M parameters with the defaults and F = 384.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SpoofModel, check_float, check_int
from .registry import register_model


class FrameMLP(nn.Module):
    """``(B, 1, F, T)`` -> ``(B, hidden, 1, T)``: the same MLP applied to every frame."""

    def __init__(self, n_features: int, hidden: int, depth: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(n_features)]
        width = n_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out_channels = hidden

    def forward(self, x: Tensor) -> Tensor:
        frames = x[:, 0].transpose(1, 2)  # (B, T, F)
        return self.net(frames).transpose(1, 2).unsqueeze(2)


class AttentiveStatsPool(nn.Module):
    """``(B, C, T)`` -> ``(B, 2C)``: attention-weighted mean and standard deviation over time."""

    def __init__(self, channels: int, attention_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(channels, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # as stats_pool: a half-precision variance loses the differences that matter
        weights = torch.softmax(self.score(x.transpose(1, 2)).squeeze(-1), dim=-1).unsqueeze(1)
        mean = (weights * x).sum(dim=-1)
        var = (weights * (x - mean.unsqueeze(-1)).pow(2)).sum(dim=-1)
        return torch.cat([mean, torch.sqrt(torch.clamp(var, min=self.eps))], dim=1)


class AttnMLP(SpoofModel):
    """:class:`SpoofModel` whose pooling is attentive statistics pooling instead of plain mean/std."""

    def __init__(self, n_features: int, embedding_dim: int, hidden: int, depth: int, dropout: float,
                 attention_dim: int) -> None:
        super().__init__(FrameMLP(n_features, hidden, depth, dropout), n_features, embedding_dim,
                         freq_pool="mean", min_frames=2)
        self.attention = AttentiveStatsPool(hidden, attention_dim)

    def pool(self, fmap: Tensor) -> Tensor:
        return self.attention(fmap.mean(dim=2))


@register_model("attn_mlp")
def attn_mlp(
    n_features: int,
    embedding_dim: int = 256,
    *,
    hidden: int = 256,
    depth: int = 2,
    dropout: float = 0.1,
    attention_dim: int = 128,
) -> SpoofModel:
    return AttnMLP(n_features, embedding_dim, check_int("hidden", hidden), check_int("depth", depth),
                   check_float("dropout", dropout, 0.0, 1.0), check_int("attention_dim", attention_dim))
