"""The shared model shape: trunk -> frequency collapse -> statistics pooling -> embedding -> linear head.

Every family only supplies a trunk that maps ``(B, 1, F, T)`` to a ``(B, C, F', T')`` map. The rest lives
here so that every model exposes the same embedding, the vector the neural-collapse analysis works on:

* frequency collapse: ``freq_pool="mean"`` (default) averages over F', so the embedding width and the
  parameter count do not depend on the front-end and the same model family serves log-mel (F=80), LFCC
  (F=60) and raw frames (F=160) alike. ``"flatten"`` folds F' into the channels instead (the usual choice of
  speaker-verification ResNets); it keeps where in frequency an artefact sits, at the price of a projection
  that grows with F.
* statistics pooling over time: mean and standard deviation, concatenated. The variance is the biased
  (population) one, clamped before the square root, so one-frame maps and silent inputs stay finite and the
  gradient never divides by zero. It is written with elementwise ops only, which export to ONNX with a
  dynamic time axis.
* embedding: ``Linear(bias=False) -> BatchNorm1d -> ReLU`` to ``embedding_dim``. BatchNorm keeps the
  embedding scale comparable across source models (the sampling step measures distances in it); the ReLU
  makes it the post-activation penultimate feature that neural-collapse studies analyse.
* ``head = nn.Linear(embedding_dim, 2)`` with class 0 = spoof, 1 = bonafide, so ``forward(x)`` is exactly
  ``head(embed(x))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ncdetect.errors import ConfigError, NcdetectError

FREQ_POOLS = ("mean", "flatten")


# Validation shared by the families: config values come from YAML, so types are checked, not assumed.
def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_ints(name: str, value: Any, length: int, minimum: int = 1) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise ConfigError(f"{name} must be a list of {length} integers, got {value!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))


def check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}), got {value!r}")
    return float(value)


def stats_pool(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean and standard deviation over the last axis of ``(B, C, T)``, concatenated to ``(B, 2C)``."""
    if x.dtype in (torch.float16, torch.bfloat16):
        # Under mixed precision a half-precision variance over hundreds of frames loses the small
        # differences that matter; the following Linear is autocast back to half anyway.
        x = x.float()
    mean = x.mean(dim=-1)
    var = (x - mean.unsqueeze(-1)).pow(2).mean(dim=-1)
    std = torch.sqrt(torch.clamp(var, min=eps))
    return torch.cat([mean, std], dim=1)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample in training, identity in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop_path must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerWeights(nn.Module):
    """A learned softmax weighting of stacked encoder layers (SUPERB, Yang et al. 2021; SLS, Zhang et al.
    2024): ``(B, 1, L * F, T)`` holding L layers of F features each -> ``(B, 1, F, T)``.

    The weights start equal (zero logits), so training begins from the mean of the layers.
    """

    def __init__(self, n_layers: int, n_features: int, names: Sequence[int] | None = None) -> None:
        super().__init__()
        self.n_layers, self.n_features = check_int("layers", n_layers, 2), check_int("n_features", n_features)
        self.names = list(names) if names is not None else list(range(n_layers))
        self.logits = nn.Parameter(torch.zeros(n_layers))

    def weights(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=0)

    def forward(self, x: Tensor) -> Tensor:
        stacked = x.reshape(x.shape[0], self.n_layers, self.n_features, x.shape[-1])
        w = self.weights().to(stacked.dtype).view(1, -1, 1, 1)
        return (w * stacked).sum(dim=1, keepdim=True)

    def extra_repr(self) -> str:
        return f"layers={self.names}, n_features={self.n_features}"


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


class SpoofModel(nn.Module):
    """A spoofing detector over ``(B, 1, F, T)`` time-frequency input with a ``(B, D)`` embedding.

    ``trunk`` must map ``(B, 1, n_features, T)`` to ``(B, C, F', T')`` for every ``T >= min_frames``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        n_features: int,
        embedding_dim: int = 256,
        freq_pool: str = "mean",
        min_frames: int = 32,
    ):
        super().__init__()
        if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
            raise ConfigError(f"n_features must be a positive integer, got {n_features!r}")
        if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        if freq_pool not in FREQ_POOLS:
            raise ConfigError(f"freq_pool must be one of {', '.join(FREQ_POOLS)}; got {freq_pool!r}")
        self.trunk = trunk
        self.n_features = n_features
        self.freq_pool = freq_pool
        self.min_frames = int(min_frames)
        channels, freq_out = self._probe(trunk, n_features, self.min_frames)
        self.trunk_channels = channels
        self.trunk_freq = freq_out
        pooled = channels * (freq_out if freq_pool == "flatten" else 1)
        self.embedding = nn.Sequential(
            nn.Linear(2 * pooled, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(embedding_dim, 2)
        self._embedding_dim = embedding_dim
        # Set by attach_input: a trainable front part (a fine-tuned encoder) and a layer weighting.
        self.encoder: nn.Module | None = None
        self.layer_weights: LayerWeights | None = None

    def attach_input(self, encoder: nn.Module | None = None, layers: Sequence[int] | None = None) -> None:
        """Put ``encoder`` (the trainable part of a front-end, trained and saved with the model) before the
        trunk, and with more than one stacked layer a :class:`LayerWeights` over them (named ``layers``)."""
        if encoder is not None:
            self.encoder = encoder
        if layers is not None and len(layers) > 1:
            self.layer_weights = LayerWeights(len(layers), self.n_features, layers)

    @staticmethod
    def _probe(trunk: nn.Module, n_features: int, frames: int) -> tuple[int, int]:
        """Run the trunk once on the smallest input it must accept, to learn C and F' and to reject a
        feature count the trunk cannot take at construction rather than at the first batch."""
        was_training = trunk.training
        trunk.eval()  # eval: BatchNorm running stats stay untouched and no RNG is consumed
        try:
            with torch.no_grad():
                out = trunk(torch.zeros(1, 1, n_features, frames))
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"n_features={n_features} is too small for this model's downsampling ({first})"
            ) from None
        finally:
            trunk.train(was_training)
        if out.ndim != 4 or out.shape[2] < 1 or out.shape[3] < 1:
            raise ConfigError(f"n_features={n_features}: trunk produced a map of shape {tuple(out.shape)}")
        return int(out.shape[1]), int(out.shape[2])

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def _check_input(self, x: Tensor) -> None:
        if _exporting():
            return
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != self.n_features or x.shape[3] < self.min_frames:
            raise ConfigError(
                f"{type(self).__name__} expects input of shape "
                f"(B, 1, {self.n_features}, T>={self.min_frames}); got {tuple(x.shape)}"
            )
        if self.training and x.shape[0] < 2:
            # BatchNorm1d cannot estimate batch statistics from one sample; say so in our terms.
            raise NcdetectError("training needs batches of at least 2 samples (BatchNorm); got a batch of 1")

    def pool(self, fmap: Tensor) -> Tensor:
        """``(B, C, F', T')`` -> ``(B, 2 * C)`` (or ``2 * C * F'`` with ``freq_pool="flatten"``)."""
        seq = fmap.mean(dim=2) if self.freq_pool == "mean" else fmap.flatten(1, 2)
        return stats_pool(seq)

    def embed(self, x: Tensor) -> Tensor:
        """The penultimate embedding ``h(x)``: exactly the vector that enters ``self.head``."""
        if self.encoder is not None:
            x = self.encoder(x)
        if self.layer_weights is not None:
            x = self.layer_weights(x)
        self._check_input(x)
        return self.embedding(self.pool(self.trunk(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 2)``: column 0 spoof, column 1 bonafide."""
        return self.head(self.embed(x))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
