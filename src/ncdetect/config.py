"""Training configuration: a validated YAML file plus ``--set key=value`` overrides.

Every section forbids unknown keys, so a typo such as ``optim.lrr`` is an error that lists the valid keys
instead of a silently ignored setting. The resolved config (all defaults filled in) is what a run saves
in ``RUN/config.yaml``, so a run folder always says exactly how it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

# Settings that change how a run goes, not what it produces: the pipeline's stage keys leave them out, so
# moving the feature store or changing the worker or thread counts reuses finished stages.
NOT_RESULT_SETTINGS = (("data", "cache_dir"), ("data", "num_workers"), ("train", "threads"))


def result_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a dict without :data:`NOT_RESULT_SETTINGS`: what a stage key hashes."""
    out = cfg.model_dump(mode="json")
    for section, key in NOT_RESULT_SETTINGS:
        out.get(section, {}).pop(key, None)
    return out


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = "tiny_resnet"
    embedding_dim: int = Field(256, ge=2)
    # Family-specific arguments (width, depths, drop_path, ...), passed to ``create_model``; unknown ones
    # are reported when the model is built.
    kwargs: dict[str, Any] = Field(default_factory=dict)


class FrontendConfig(_Section):
    name: str = "logmel"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Section):
    num_samples: int = Field(64_600, ge=400, description="training/eval window in samples at 16 kHz")
    trim_silence: bool = False
    batch_size: int = Field(32, ge=1, description="per process; the global batch is this x world size")
    num_workers: int = Field(2, ge=0)
    feature_cache: bool = False  # read features from the feature store (data/features.py)
    cache_dir: str | None = None  # the feature store's folder; default: RUN/features (or the experiment's)
    crops: int = Field(3, ge=1, description="training windows per utterance, each encoded on its own, for "
                                            "front-ends that are not shift-invariant (Whisper)")


class OptimConfig(_Section):
    epochs: int = Field(20, ge=1)
    # A budget in optimiser steps instead of epochs (a recipe's ``compact.budget: steps`` sets both): the
    # run takes ceil(steps / steps per epoch) epochs, the last one cut short, and the schedule spans them.
    steps: int | None = Field(None, ge=1, description="optimiser steps; null = epochs x steps per epoch")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(1.0, ge=0)
    warmup_steps: int | None = Field(None, ge=0, description="warm-up in steps; null = warmup_epochs")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float | None = Field(5.0, gt=0)
    # Gradient accumulation: each optimiser step sums ``accumulate`` micro-batches, so the global batch is
    # data.batch_size x world size x accumulate.
    accumulate: int = Field(1, ge=1)
    # The peak learning rate of a front-end part that the model trains (frontend.kwargs.finetune: the
    # Whisper stem and first layers), on the same warm-up and cosine schedule; null = lr.
    frontend_lr: float | None = Field(None, gt=0)
    # The peak learning rate of the learned layer weighting (frontend.kwargs.layers: all or a list), on the
    # same schedule; null = lr. Its few logits need a higher rate than the head to move in a short run.
    layer_weights_lr: float | None = Field(None, gt=0)


class LossConfig(_Section):
    # weighted: cross-entropy with class weights N / (2 N_c); sampler: class-balanced draw with
    # replacement; none: plain cross-entropy on the natural (about 1:9) class ratio.
    balance: Literal["weighted", "sampler", "none"] = "weighted"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class SpecAugmentConfig(_Section):
    enabled: bool = False
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(8, ge=0, description="max bins per frequency mask")
    time_masks: int = Field(2, ge=0)
    time_width: int = Field(20, ge=0, description="max frames per time mask")


class RawBoostConfig(_Section):
    enabled: bool = False
    # Which of the three RawBoost-style algorithms to chain, in this order: 1 = linear and non-linear
    # convolutive noise (random FIR filters), 2 = impulsive signal-dependent noise, 3 = stationary
    # coloured additive noise.
    algos: list[Literal[1, 2, 3]] = Field(default_factory=lambda: [1, 2, 3])
    p: float = Field(1.0, ge=0, le=1, description="probability that an utterance is augmented")
    snr_min: float = 10.0
    snr_max: float = 40.0


class CodecAugmentConfig(_Section):
    """Codec and channel augmentation, rendered into the feature cache (see data/codec_augment.py)."""

    enabled: bool = False
    variants: int = Field(4, ge=1, le=64, description="augmented copies per training window (K)")
    p: float = Field(0.8, ge=0, le=1, description="chance that an epoch reads a copy, not the clean window")
    codecs: list[Literal["mp3", "opus", "gsm", "g722", "mulaw", "alaw"]] = Field(
        default_factory=lambda: ["mp3", "opus", "gsm", "g722", "mulaw", "alaw"])
    p_codec: float = Field(0.8, ge=0, le=1)
    p_packet_loss: float = Field(0.25, ge=0, le=1)
    max_loss: float = Field(0.1, gt=0.01, le=0.5, description="packet-loss rate drawn in [0.01, max_loss]")
    p_filter: float = Field(0.3, ge=0, le=1, description="probability of a random low- or high-pass")
    p_noise: float = Field(0.3, ge=0, le=1)
    snr_min: float = 10.0
    snr_max: float = 40.0
    seed: int = Field(0, description="the copies are a function of this seed and the utterance alone")


class AugmentConfig(_Section):
    specaugment: SpecAugmentConfig = Field(default_factory=SpecAugmentConfig)
    rawboost: RawBoostConfig = Field(default_factory=RawBoostConfig)
    codec: CodecAugmentConfig = Field(default_factory=CodecAugmentConfig)

    @field_validator("specaugment", "rawboost", "codec", mode="before")
    @classmethod
    def _bool_shorthand(cls, value: Any) -> Any:
        # ``--set augment.rawboost=true`` is accepted as ``augment.rawboost.enabled=true``.
        return {"enabled": value} if isinstance(value, bool) else value


class TrainSection(_Section):
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 where supported on CUDA, off on CPU
    device: str = "auto"  # auto: cuda when present (cuda:LOCAL_RANK under torchrun), else cpu
    patience: int | None = Field(5, ge=1, description="epochs without dev-EER improvement; null = off")
    select_by: Literal["dev_eer", "last"] = "dev_eer"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = torch default")


class TrainConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    frontend: FrontendConfig = Field(default_factory=FrontendConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _check_names(self) -> TrainConfig:
        from .data.frontends import FRONTENDS
        from .models import list_models

        if self.model.name not in list_models():
            valid = ", ".join(list_models())
            raise ValueError(f"model.name: unknown model {self.model.name!r}; valid: {valid}")
        if self.frontend.name not in FRONTENDS:
            raise ValueError(
                f"frontend.name: unknown front-end {self.frontend.name!r}; valid: {', '.join(FRONTENDS)}"
            )
        if self.data.feature_cache and self.augment.rawboost.enabled:
            raise ValueError(
                "data.feature_cache and augment.rawboost exclude each other: RawBoost changes the waveform "
                "every epoch, so there is no fixed front-end output to cache"
            )
        if self.augment.codec.enabled and not self.data.feature_cache:
            raise ValueError(
                "augment.codec needs data.feature_cache: true: the codec copies are rendered once into "
                "the feature cache (ffmpeg per sample and epoch would be far too slow)"
            )
        if self.augment.codec.snr_min > self.augment.codec.snr_max:
            raise ValueError("augment.codec: snr_min must not exceed snr_max")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able data."""
        return self.model_dump(mode="json")


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> TrainConfig:
    """Read ``path`` (None = defaults), apply ``a.b=value`` overrides (values parsed as YAML), then
    ``values`` (``{"a.b": value}``, e.g. a recipe's ``set``; a string there is YAML text too, as recipe
    variables are substituted into text), validate."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{path}: cannot be read as UTF-8 text ({err})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}{line}: invalid YAML ({problem})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        apply_override(data, item)
    for key, value in (values or {}).items():
        set_key(data, key, parse_value(value) if isinstance(value, str) else value, f"{key}: {value!r}")
    return validate_config(data, where)


def validate_config(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Validate a config mapping; the first problem becomes a one-line :class:`ConfigError`."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_describe(err)}") from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to the nested mapping ``data`` in place."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.001")
    set_key(data, key, parse_value(raw), f"--set {item!r}")


def parse_value(raw: str) -> Any:
    """A setting written as text, parsed as YAML (``8`` -> 8, ``[8, 16]`` -> a list); blank -> None."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw  # not valid YAML on its own: take the text as a string


def set_key(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set the dotted ``key`` (``a.b.c``) of the nested mapping ``data`` to ``value`` in place, making the
    sections on the way; ``where`` names the setting in the error when a section is a value."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{where}: {prefix} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


def valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted at the section ``loc`` (e.g. ``("optim",)``) of a TrainConfig."""
    model: type[BaseModel] = TrainConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    dotted = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        section = loc[:-1]
        keys = valid_keys(section)
        inside = ".".join(str(p) for p in section) or "the top level"
        return f"unknown key {dotted!r}; valid keys in {inside}: {', '.join(keys)}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not loc:
        return msg
    given = first.get("input")
    shown = f" (got {given!r})" if not isinstance(given, dict) else ""
    return f"{dotted}: {msg}{shown}"
