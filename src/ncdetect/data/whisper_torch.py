"""The Whisper encoder in PyTorch, with its weights read from a CTranslate2 ``model.bin``.

CTranslate2 runs the encoder fast (int8 on CPU) but returns only its last layer, has no autograd and no
ONNX graph. This module rebuilds the same encoder as a ``torch.nn.Module`` so that a front-end can take
every hidden layer in one pass, train the first layers, run on any torch device and export.

Architecture (Whisper, Radford et al. 2022, as CTranslate2 stores it): ``Conv1d(n_mels, d, 3, pad 1)`` ->
GELU -> ``Conv1d(d, d, 3, stride 2, pad 1)`` -> GELU -> + sinusoidal positions (the table stored in the
file, cut to the input length) -> pre-LN transformer layers (``x + attn(LN(x))``, ``x + ffn(LN(x))``,
exact-erf GELU in the feed-forward) -> the final layer norm.

Hidden layer ``k`` (``k`` = 1..L, 0 = the stem's output with positions) is returned through the final
layer norm, as CTranslate2 returns it from a copy of ``model.bin`` cut after ``k`` layers
(:func:`ncdetect.data.whisper.hidden_layer_model`): the same numbers, so ``layers: k`` means one thing
on both backends.

The file format (``ctranslate2/specs/model_spec.py``, binary version >= 5): a header, then per variable
its name, rank, dimensions, a dtype id and its bytes, then aliases (names that share another variable's
bytes). Quantised weights (int8, int16) come with a ``<name>_scale`` variable; the float value is
``weight / scale``, per output row for int8.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# CTranslate2's DataType ids, in the order of its model_spec.py
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n).rstrip(b"\0").decode("utf-8")


@dataclass(frozen=True)
class Variable:
    """One variable of a ``model.bin``: its record spans bytes ``start:end`` of the file, its values
    ``data:end``."""

    name: str
    shape: tuple[int, ...]
    dtype_id: int
    start: int
    data: int
    end: int


@dataclass(frozen=True)
class ModelBin:
    """The variable table of a CTranslate2 ``model.bin``, read without loading the weights: the file's
    first ``header`` bytes come before the variable count, ``aliases`` is the offset of the alias table
    that follows the variables, ``alias_pairs`` its ``(alias, target)`` names."""

    path: Path
    header: int
    variables: list[Variable]
    aliases: int
    alias_pairs: list[tuple[str, str]]


def scan_model_bin(model_bin: Path) -> ModelBin:
    """Walk a CTranslate2 ``model.bin`` (binary version >= 5), skipping over the weights' bytes."""
    try:
        with open(model_bin, "rb") as f:
            (version,) = struct.unpack("<I", f.read(4))
            if version < 5:
                raise ConfigError(f"{model_bin}: CTranslate2 model format {version} is too old (5 or later "
                                  "needed); convert the model with a recent ctranslate2")
            _read_string(f)  # spec name
            f.read(4)  # spec revision
            header = f.tell()
            (count,) = struct.unpack("<I", f.read(4))
            variables = []
            for _ in range(count):
                start = f.tell()
                name = _read_string(f)
                (rank,) = struct.unpack("<B", f.read(1))
                shape = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
                (dtype_id,) = struct.unpack("<B", f.read(1))
                (size,) = struct.unpack("<I", f.read(4))
                data = f.tell()
                f.seek(size, 1)
                variables.append(Variable(name, tuple(shape), dtype_id, start, data, data + size))
            aliases = f.tell()
            if aliases > os.fstat(f.fileno()).st_size:  # seek goes past the end without complaint
                raise ValueError(f"truncated in {variables[-1].name}")
            (n_alias,) = struct.unpack("<I", f.read(4) or b"\0\0\0\0")
            pairs = [(_read_string(f), _read_string(f)) for _ in range(n_alias)]
    except (OSError, struct.error, ValueError) as err:
        raise ConfigError(f"{model_bin}: not a readable CTranslate2 model ({err})") from None
    return ModelBin(Path(model_bin), header, variables, aliases, pairs)


def read_variables(model_bin: Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``, as float32 (or
    integer, for scalars such as ``num_heads``) arrays; aliases resolved, quantised weights de-scaled."""
    table = scan_model_bin(model_bin)
    out: dict[str, np.ndarray] = {}
    with open(model_bin, "rb") as f:
        for var in table.variables:
            if not var.name.startswith(prefix):
                continue
            f.seek(var.data)
            raw = f.read(var.end - var.data)
            if var.dtype_id == _BFLOAT16:  # numpy has no bfloat16: widen the 16 bits to float32's top half
                array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif var.dtype_id in _DTYPES:
                array = np.frombuffer(raw, _DTYPES[var.dtype_id])
            else:
                raise ConfigError(f"{model_bin}: variable {var.name} has a data type ({var.dtype_id}) this "
                                  "reader does not know; convert the model with float16 or float32 weights")
            try:
                out[var.name] = array.reshape(var.shape)
            except ValueError as err:
                raise ConfigError(f"{model_bin}: variable {var.name}: {err}") from None
    for alias, target in table.alias_pairs:
        if alias.startswith(prefix) and target in out:
            out[alias] = out[target]
    return _dequantised(out)


def _dequantised(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            scale = scale.astype(np.float32)
            per_row = scale.reshape(-1, *[1] * (value.ndim - 1)) if scale.ndim else scale
            value = value.astype(np.float32) / per_row
        elif value.dtype.kind == "f":
            value = value.astype(np.float32)
        out[name] = value
    return out


class EncoderLayer(nn.Module):
    """One pre-LN transformer layer: ``x + attn(LN(x))``, then ``x + ffn(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int) -> None:
        super().__init__()
        self.n_heads, self.scale = n_heads, 1.0 / math.sqrt(d_model // n_heads)
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)  # fused as CTranslate2 stores it (the key bias is 0)
        self.out = nn.Linear(d_model, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ffn)
        self.fc2 = nn.Linear(d_ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        # Written out rather than scaled_dot_product_attention: it exports to every ONNX opset as is.
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * self.scale
        att = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v.transpose(1, 2))
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class TorchWhisperEncoder(nn.Module):
    """The encoder; :meth:`forward` maps a log-mel ``(B, n_mels, frames)`` to the chosen hidden layers.

    Build it with :func:`load_encoder_weights`. ``depth`` keeps only the first ``depth`` layers (later ones
    are never needed when no chosen layer lies beyond them).
    """

    def __init__(
        self, n_mels: int, d_model: int, n_heads: int, n_layers: int, d_ffn: int, n_ctx: int
    ) -> None:
        super().__init__()
        self.n_mels, self.d_model, self.n_ctx = n_mels, d_model, n_ctx
        self.conv1 = nn.Conv1d(n_mels, d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(n_ctx, d_model), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ffn) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def stem(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, n_mels, frames)`` -> ``(B, ceil(frames / 2), d_model)``, positions added."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if not torch.jit.is_tracing() and x.shape[1] > self.n_ctx:
            raise ConfigError(f"whisper encoder: {x.shape[1]} frames exceed its {self.n_ctx} positions "
                              f"({self.n_ctx * 2 * 160 / 16_000:.0f} s)")
        return x + self.positions[: x.shape[1]]

    def forward(self, mel: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """``(B, n_mels, frames)`` -> ``(B, len(layers), frames', d_model)``: each chosen hidden layer
        (0 = the stem) through the final layer norm."""
        wanted = set(layers)
        x = self.stem(mel)
        found = {0: self.final_norm(x)} if 0 in wanted else {}
        for i, layer in enumerate(self.layers[: max(layers)], start=1):
            x = layer(x)
            if i in wanted:
                found[i] = self.final_norm(x)
        return torch.stack([found[k] for k in layers], dim=1)


def load_encoder_weights(model_dir: Path, depth: int | None = None) -> TorchWhisperEncoder:
    """A :class:`TorchWhisperEncoder` with the weights of ``model_dir/model.bin`` (float32), keeping the
    first ``depth`` layers (None: all)."""
    model_bin = Path(model_dir) / "model.bin"
    v = read_variables(model_bin)
    try:
        conv1, conv2 = v["encoder/conv1/weight"], v["encoder/conv2/weight"]
        n_layers = 1 + max(int(m.group(1)) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k)))
        d_model, n_mels = conv1.shape[0], conv1.shape[1]
        n_heads = int(v["encoder/num_heads"].reshape(-1)[0])
        d_ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        positions = v["encoder/position_encodings/encodings"]
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(f"{model_bin}: not a Whisper encoder (missing {err})") from None
    keep = n_layers if depth is None else depth
    if not 0 <= keep <= n_layers:
        raise ConfigError(f"{model_bin}: the encoder has {n_layers} layers, not {keep}")
    enc = TorchWhisperEncoder(n_mels, d_model, n_heads, keep, d_ffn, positions.shape[0])
    state = {"conv1.weight": conv1, "conv1.bias": v["encoder/conv1/bias"], "conv2.weight": conv2,
             "conv2.bias": v["encoder/conv2/bias"], "final_norm.weight": v["encoder/layer_norm/gamma"],
             "final_norm.bias": v["encoder/layer_norm/beta"]}
    names = {"attn_norm": "self_attention/layer_norm", "qkv": "self_attention/linear_0",
             "out": "self_attention/linear_1", "ffn_norm": "ffn/layer_norm", "fc1": "ffn/linear_0",
             "fc2": "ffn/linear_1"}
    for i in range(keep):
        for ours, theirs in names.items():
            w, b = ("gamma", "beta") if ours.endswith("norm") else ("weight", "bias")
            state[f"layers.{i}.{ours}.weight"] = v[f"encoder/layer_{i}/{theirs}/{w}"]
            state[f"layers.{i}.{ours}.bias"] = v[f"encoder/layer_{i}/{theirs}/{b}"]
    try:
        enc.load_state_dict({k: torch.from_numpy(np.array(a, np.float32)) for k, a in state.items()})
    except RuntimeError as err:
        raise ConfigError(f"{model_bin}: encoder weights of unexpected shapes "
                          f"({str(err).splitlines()[-1].strip()})") from None
    enc.positions.copy_(torch.from_numpy(np.array(positions, np.float32)))
    return enc


def parse_layers(layers: int | str | Sequence[int] | None, total: int) -> list[int]:
    """``layers`` as the list of hidden layers to return: None = ``[total]`` (the encoder output),
    N = ``[N]``, ``all`` = ``[0, 1, ..., total]`` (0 = the stem), a list = those layers, in that order."""
    def bad() -> ConfigError:
        return ConfigError(f"frontend whisper: layers must be an integer in [1, {total}], 'all', a list of "
                           f"distinct integers in [0, {total}], or null (the encoder output); not {layers!r}")

    if layers is None:
        return [total]
    if layers == "all":
        return list(range(total + 1))
    if isinstance(layers, (bool, str)):
        raise bad()
    if isinstance(layers, int):
        if not 1 <= layers <= total:
            raise bad()
        return [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise bad()
    ids = list(layers)
    if (any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total for k in ids)
            or len(set(ids)) != len(ids)):
        raise bad()
    return ids


class EncoderStage(nn.Module):
    """The torch encoder as a front-end stage: log-mel ``(B, 1, n_mels, frames)`` (or ``(B, n_mels,
    frames)``) -> the chosen layers stacked along the feature axis, ``(B, 1, len(layers) * d_model,
    frames')``, the layout a model over ``(B, 1, F, T)`` and the feature cache take as they are.

    ``finetune``: the stem and the first ``finetune`` layers keep ``requires_grad``; the final layer norm
    and the later layers are frozen (0: everything is frozen).
    """

    def __init__(self, encoder: TorchWhisperEncoder, layers: Sequence[int], finetune: int = 0) -> None:
        super().__init__()
        self.encoder, self.layers, self.finetune = encoder, list(layers), int(finetune)
        encoder.requires_grad_(False)
        if self.finetune:
            for part in (encoder.conv1, encoder.conv2, *encoder.layers[: self.finetune]):
                part.requires_grad_(True)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() == 4:
            mel = mel[:, 0]
        out = self.encoder(mel, self.layers)  # (B, L, T', d)
        return out.permute(0, 1, 3, 2).reshape(out.shape[0], 1, -1, out.shape[2])

    def extra_repr(self) -> str:
        return f"layers={self.layers}, finetune={self.finetune}"
