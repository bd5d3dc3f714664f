"""Run folders: weights in safetensors (never pickle), the resolved config, and loading both back.

A run folder holds ``model.safetensors`` (the selected model), ``config.yaml`` (complete), ``metrics.json``
and ``train.log``. :func:`load_run` rebuilds the front-end and the model from the config and loads the
weights, refusing anything that is not a safetensors file or does not fit the architecture exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .config import TrainConfig, validate_config
from .errors import ConfigError, ModelFileError
from .fileio import atomic_path

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"

# A safetensors file starts with an 8-byte little-endian header length and then the JSON header, so
# its 9th byte is "{". torch.save zip archives start with "PK", raw pickles with the PROTO opcode 0x80.
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")


def build_frontend(cfg: TrainConfig) -> nn.Module:
    """The configured front-end (no trainable parameters; rebuilt from the config, not stored)."""
    from .data.frontends import build_frontend as _build

    try:
        return _build(cfg.frontend.name, **cfg.frontend.kwargs)
    except TypeError as err:
        raise ConfigError(f"frontend.kwargs: {err}") from None


def build_model(cfg: TrainConfig, n_features: int, frontend: nn.Module | None = None) -> nn.Module:
    """The configured model, freshly initialised.

    A front-end with a ``model_input()`` (the Whisper encoder with ``layers: all`` or ``finetune``) says
    what the model sees per layer, how many layers it stacks, and which part of it the model trains; the
    model then gets a learned layer weighting and that trainable part (:meth:`SpoofModel.attach_input`).
    """
    from .models import create_model

    side = frontend.model_input() if hasattr(frontend, "model_input") else None
    if side is not None:
        n_features = side.n_features
    try:
        model = create_model(
            cfg.model.name, n_features=n_features, embedding_dim=cfg.model.embedding_dim, **cfg.model.kwargs
        )
    except TypeError as err:
        raise ConfigError(f"model.kwargs for {cfg.model.name}: {err}") from None
    if side is not None:
        model.attach_input(side.encoder, side.layers)
    # Channels-last convolution weights: oneDNN's fastest CPU kernels (training 1.2-1.6x faster for the
    # ResNets and LCNN, benchmarks/bench_models.py) and cuDNN's tensor-core layout. Only the memory
    # layout changes; save_weights stores plain contiguous tensors, so the files do not depend on it.
    return model.to(memory_format=torch.channels_last)


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str | Path, model_name: str = "") -> Path:
    """Write a state dict as safetensors, atomically, with the model name and version as metadata."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    # safetensors refuses shared or non-contiguous storage; a detached contiguous copy is always valid.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    meta = {"format": "pt", "ncdetect_version": __version__, "model": model_name}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_metadata(tmp)
    return path


def _sort_metadata(tmp_file: Path) -> None:
    """Rewrite the header of a safetensors file (a temporary one, before it is renamed into place) with
    its metadata keys sorted.

    safetensors writes ``__metadata__`` from a hash map, in a different order on every call, so the same
    weights gave different bytes (and digests). The sorted header has the same length, so the tensor
    offsets stay valid; where it would not (it always should), the file is left as written.
    """
    import json
    import struct

    with open(tmp_file, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        if not header.get("__metadata__"):
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= n:
            f.seek(8)
            f.write(text.ljust(n, b" "))  # the format pads the header with spaces


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file into CPU tensors and its metadata; anything else is a ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_PICKLE_MAGICS):
        raise ModelFileError(
            f"{path}: this is a pickle / torch.save file; ncdetect only loads safetensors weights "
            "(unpickling can run arbitrary code)"
        )
    if len(head) < 9 or head[8:9] != b"{":
        raise ModelFileError(f"{path}: not a safetensors file (truncated or wrong format)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelFileError(f"{path}: truncated or corrupt safetensors file ({reason})") from None
    return tensors, meta


def load_weights(model: nn.Module, path: str | Path, model_name: str | None = None) -> nn.Module:
    """Load safetensors weights into ``model``, requiring the exact same keys and shapes."""
    tensors, meta = read_weights(path)
    stored = meta.get("model", "")
    if model_name and stored and stored != model_name:
        raise ModelFileError(f"{path}: weights are for model {stored!r} but the config says {model_name!r}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ModelFileError(f"{path}: weights do not match the architecture: {'; '.join(parts)} tensors")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ModelFileError(
                f"{path}: tensor {key} has shape {tuple(got.shape)} but the model expects "
                f"{tuple(want.shape)} (config and weights disagree)"
            )
        if got.dtype != want.dtype:
            tensors[key] = got.to(want.dtype)
    model.load_state_dict(tensors, strict=True)
    return model


def read_run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: run folder has no {CONFIG_FILE} (is {run_dir} a training run?)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, OSError) as err:
        raise ModelFileError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    except yaml.YAMLError as err:
        raise ModelFileError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: not a config mapping")
    return validate_config(data, str(path))


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` = the GPU of this process when CUDA is present, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass
class LoadedRun:
    """A trained detector: its config, front-end and model, ready for inference (eval mode)."""

    config: TrainConfig
    frontend: nn.Module
    model: nn.Module
    device: torch.device
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_samples(self) -> int:
        return self.config.data.num_samples

    @torch.inference_mode()
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        return self.frontend(wave.to(self.device, torch.float32))

    @torch.inference_mode()
    def logits(self, wave: torch.Tensor) -> torch.Tensor:
        """Logits [B, 2] (0 = spoof, 1 = bonafide) for waveforms [B, T] at 16 kHz."""
        return self.model(self.features(wave))

    @torch.inference_mode()
    def embed_and_logits(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate embeddings [B, D] and the logits the head computes from them."""
        emb = self.model.embed(self.features(wave))
        return emb, self.model.head(emb)

    def score(self, wave: torch.Tensor) -> torch.Tensor:
        """logit(bonafide) - logit(spoof): higher = more likely bonafide."""
        logits = self.logits(wave).float()
        return logits[:, 1] - logits[:, 0]


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a trained detector from a run folder."""
    import json

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelFileError(f"{run_dir}: run folder not found")
    cfg = read_run_config(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    frontend = build_frontend(cfg)
    model = build_model(cfg, frontend.n_features, frontend)
    load_weights(model, run_dir / MODEL_FILE, model_name=cfg.model.name)
    metrics: dict[str, Any] = {}
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ModelFileError(f"{metrics_path}: invalid JSON ({err})") from None
    frontend.to(device).eval()
    model.to(device).eval()
    return LoadedRun(config=cfg, frontend=frontend, model=model, device=device, path=run_dir, metrics=metrics)
