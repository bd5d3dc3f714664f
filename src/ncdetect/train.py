"""``ncdetect train``: one detector from a manifest, read top to bottom.

The file is laid out like timm's train.py: helpers first (data order, learning-rate schedule, the
checkpointed :class:`TrainState`, the run folder), then the steps (:func:`train_one_epoch`,
:func:`validate`, :func:`select_model`), then :func:`train`, which reads as the list of its steps.
Augmentation lives in :mod:`ncdetect.data.augment`, the distributed helpers in :mod:`ncdetect.distributed`.

Reproducibility and resumption
    Every random choice of an epoch is a pure function of ``(seed, epoch, index)``: the data order
    (:func:`epoch_batches`), the crops (the dataset), RawBoost and SpecAugment
    (:func:`~ncdetect.data.augment.aug_rng`). The rest of the state (:class:`TrainState`, plus the model,
    optimiser, GradScaler and the global torch / numpy / python RNGs) is saved after every epoch in
    ``RUN/checkpoint/`` (safetensors for tensors, JSON for the rest), so ``--resume`` after a crash ends,
    on CPU, with the same weights bit for bit as a run that was never interrupted.

Model selection
    With ``--dev``: the epoch with the lowest dev EER is kept (``train.select_by: dev_eer``) and training
    stops after ``train.patience`` epochs without improvement. Without ``--dev`` there is nothing to
    select on, so the model of the last epoch is kept. ``model.safetensors`` is the selected model.

Distributed
    ``torchrun --nproc_per_node N -m ncdetect.cli train ...`` runs DistributedDataParallel (NCCL on CUDA,
    gloo on CPU). ``data.batch_size`` is per process: the global batch is batch_size x N x
    ``optim.accumulate``. The distributed lines are marked ``# DIST``. BatchNorm statistics are per process
    (as in every plain DDP setup), so N processes with batch B match one process with batch B and
    ``optim.accumulate: N`` (tests/test_distributed.py checks this), not one process with batch N x B.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import NOT_RESULT_SETTINGS, OptimConfig, TrainConfig
from .data.augment import RawBoostDataset, spec_augment
from .data.loader import worker_init
from .distributed import DistEnv, all_gather_list, all_reduce_sum, barrier, init_distributed
from .errors import ConfigError, NcdetectError
from .fileio import ensure_writable_dir, reporting_write_errors, write_json, write_text, write_yaml
from .progress import echo, progress_bar
from .runs import CONFIG_FILE, METRICS_FILE, MODEL_FILE
from .sysinfo import native_bf16_flags

CHECKPOINT_DIR = "checkpoint"
RUN_ARTIFACTS = (
    MODEL_FILE, CONFIG_FILE, METRICS_FILE, "train.log", "skipped.csv", "dev_skipped", CHECKPOINT_DIR,
)
# Settings that may change between a run and its --resume without changing the result.
RESUME_MAY_DIFFER = {*NOT_RESULT_SETTINGS, ("train", "device")}



# --- data order and learning rate ------------------------------------------------------------------


def epoch_batches(
    labels: np.ndarray, epoch: int, seed: int, balance: str, batch_size: int, env: DistEnv, accumulate: int
) -> list[list[int]]:
    """This process's micro-batches for one epoch, in order: a pure function of (seed, epoch).

    One permutation (or, with ``balance: sampler``, one class-balanced draw with replacement) of the
    whole training set is cut into global batches of ``batch_size x world x accumulate``; the last,
    incomplete one is dropped. Slot ``rank * accumulate + a`` of every global batch takes the items
    ``slot::world * accumulate``, so N processes see exactly the items one process sees with
    ``accumulate = N``. (torch's DistributedSampler would pad the last batch and has no balanced draw.)
    """
    n = len(labels)
    rng = np.random.default_rng([seed, epoch, 0x0DE5])
    if balance == "sampler":
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        p = 1.0 / counts[labels]
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    else:
        order = rng.permutation(n)
    slots = env.world * accumulate
    global_batch = batch_size * slots
    batches = []
    for step in range(n // global_batch):
        chunk = order[step * global_batch : (step + 1) * global_batch]
        for a in range(accumulate):
            batches.append(chunk[env.rank * accumulate + a :: slots].tolist())
    return batches


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up, then a cosine decay from ``lr`` to ``min_lr`` at the last step."""
    # Not torch.optim.lr_scheduler: LambdaLR multiplies the base lr by a factor, which is this value
    # divided by lr, and lr * (v / lr) != v for a share of the steps (e.g. 26 of 1000 at lr 1e-3), so every
    # existing run would train with ulp-shifted rates and end with other weights; SequentialLR(LinearLR,
    # CosineAnnealingLR) updates recursively and drifts further. As a pure function of the step counter
    # the schedule also needs nothing in the checkpoint but ``step``.
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (lr - min_lr)


@dataclass(frozen=True)
class Schedule:
    """How long a run trains and how its learning rate moves: ``optim.steps`` optimiser steps when set,
    else ``optim.epochs`` full epochs."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @property
    def epochs(self) -> int:
        """Epochs started; the last one stops at ``total_steps``."""
        return math.ceil(self.total_steps / self.steps_per_epoch)


def schedule(optim: OptimConfig, steps_per_epoch: int) -> Schedule:
    total = optim.steps if optim.steps is not None else optim.epochs * steps_per_epoch
    warmup = (optim.warmup_steps if optim.warmup_steps is not None
              else round(optim.warmup_epochs * steps_per_epoch))
    return Schedule(steps_per_epoch, total, warmup)


# --- checkpoints -----------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(py_state), gauss],
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``checkpoint/epoch-NNNN/`` under a temporary name, rename it into place, then point
    ``checkpoint/LATEST`` at it (an atomic file replace). A crash at any moment leaves LATEST naming a
    complete checkpoint; older ones are removed only afterwards."""
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINT_DIR
    name = f"epoch-{meta['epoch']:04d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    try:
        with reporting_write_errors(root / name):  # e.g. a full disk: one line naming the checkpoint
            tmp.mkdir(parents=True)
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
            for f in (tmp / "state.safetensors", tmp / "state.json"):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text(root / "LATEST", name + "\n")
    for old in root.iterdir():
        if old.name not in (name, "LATEST"):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return final


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    from .runs import read_weights

    latest = run_dir / CHECKPOINT_DIR / "LATEST"
    if not latest.is_file():
        return None
    folder = run_dir / CHECKPOINT_DIR / latest.read_text(encoding="utf-8").strip()
    tensors, _ = read_weights(folder / "state.safetensors")
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise NcdetectError(f"{folder / 'state.json'}: unreadable checkpoint ({err})") from None
    return tensors, meta


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class TrainState:
    """Everything of a run that changes during training, as one checkpoint saves and restores it.

    The fields below go to ``state.json`` by name, and :meth:`from_checkpoint` reads back every field
    :meth:`to_checkpoint` wrote, so a new field cannot be saved but not restored. The model, optimiser,
    GradScaler and the global RNGs are passed in: they belong to the run, the state only snapshots them.
    """

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken: the schedule's position
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "dev_eer": None, "threshold": None})
    bad_epochs: int = 0  # epochs since the dev EER last improved
    skipped: list[tuple[int, str]] = field(default_factory=list)
    dev_skipped: list[tuple[int, str]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None  # the selected weights; tensors, saved as "best.*"

    def __post_init__(self) -> None:
        # JSON turns the (index, message) tuples into lists; sets of them need tuples.
        self.skipped = [tuple(x) for x in self.skipped]  # type: ignore[misc]
        self.dev_skipped = [tuple(x) for x in self.dev_skipped]  # type: ignore[misc]

    def to_checkpoint(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        config: dict[str, Any],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, meta)`` for :func:`save_checkpoint`."""
        rng_tensors, rng_meta = _rng_state()
        opt_tensors, opt_meta = _optimizer_state(opt)
        tensors = {**_prefixed("model.", model.state_dict()), **opt_tensors, **rng_tensors}
        if self.best_state is not None:
            tensors.update(_prefixed("best.", self.best_state))
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best_state"}
        meta.update(optimizer=opt_meta, scaler=scaler.state_dict(), rng=rng_meta, config=config)
        return tensors, meta

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]],
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> TrainState:
        """Load the model, optimiser, scaler and RNGs from ``checkpoint`` and return the state."""
        tensors, meta = checkpoint
        model.load_state_dict(_unprefixed("model.", tensors))
        _load_optimizer_state(opt, tensors, meta["optimizer"])
        if meta["scaler"]:
            scaler.load_state_dict(meta["scaler"])
        _set_rng_state(tensors, meta["rng"])
        saved = {f.name: meta[f.name] for f in fields(cls) if f.name != "best_state"}
        return cls(**saved, best_state=_unprefixed("best.", tensors) or None)


# --- run folder and log ------------------------------------------------------------------------------


class RunLog:
    """train.log: plain timestamped lines; also echoed concisely to stderr (without breaking the bar)."""

    def __init__(self, path: Path | None, echo: bool = True):
        self.path, self.echo = path, echo

    def __call__(self, msg: str) -> None:
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
            except OSError as err:
                reason = err.strerror or err
                raise NcdetectError(f"{self.path}: cannot append to the log ({reason})") from None
        if self.echo:
            echo(f"[train] {msg}")


def _run_state(out: Path) -> str:
    """``new``, ``finished`` (metrics.json says so) or ``unfinished`` (a config or checkpoint, no end)."""
    metrics = out / METRICS_FILE
    if metrics.is_file():
        try:
            if json.loads(metrics.read_text(encoding="utf-8")).get("finished"):
                return "finished"
        except json.JSONDecodeError:
            pass
    if (out / CONFIG_FILE).is_file() or (out / CHECKPOINT_DIR).exists():
        return "unfinished"
    return "new"


def _config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    diffs = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if (section, key) not in RESUME_MAY_DIFFER and sa.get(key) != sb.get(key):
                diffs.append(f"{section}.{key}")
    return diffs


# --- the steps of a run ------------------------------------------------------------------------------


@dataclass
class TrainData:
    """The manifests of a run, read and checked."""

    train_df: pd.DataFrame
    dev_df: pd.DataFrame | None
    labels: np.ndarray  # 0 spoof, 1 bonafide, per training row
    counts: np.ndarray  # utterances per class


@dataclass
class TrainContext:
    """What stays fixed during a run: the config, the processes, the model and its optimiser."""

    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    frontend: nn.Module
    model: nn.Module
    ddp_model: nn.Module  # the model itself with one process
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    class_weight: torch.Tensor
    steps_per_epoch: int
    skip_bad: bool
    progress: bool

    @property
    def schedule(self) -> Schedule:
        return schedule(self.cfg.optim, self.steps_per_epoch)

    @property
    def show_progress(self) -> bool:
        return self.env.is_main and self.progress

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def read_train_data(train_manifest: str | Path, dev_manifest: str | Path | None) -> TrainData:
    from .data.manifest import read_manifest

    train_df = read_manifest(train_manifest)
    labels = train_df["label"].map({"spoof": 0, "bonafide": 1}).to_numpy(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        missing = "bonafide" if counts[1] == 0 else "spoof"
        raise NcdetectError(f"{train_manifest}: the training manifest has no {missing} utterances")
    dev_df = read_manifest(dev_manifest) if dev_manifest is not None else None
    if dev_df is not None and dev_df["label"].nunique() < 2:
        raise NcdetectError(f"{dev_manifest}: the dev manifest needs both bonafide and spoof utterances")
    return TrainData(train_df, dev_df, labels, counts)


def prepare_run_folder(out: Path, env: DistEnv, resume: bool, force: bool) -> dict[str, Any] | None:
    """Make ``out`` ready for a new or resumed run; a finished run's metrics when there is nothing to do."""
    state = _run_state(out)
    if state != "new" and not (resume or force):
        raise NcdetectError(
            f"{out}: holds {'a finished' if state == 'finished' else 'an unfinished'} training run; pass "
            "--resume to continue it, --force to start over, or choose another --out"
        )
    if state == "finished" and resume and not force:
        return json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    barrier(env)
    if env.is_main:
        if force and state != "new":
            for name in RUN_ARTIFACTS:  # only what a run writes: --out may hold other files
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        ensure_writable_dir(out)
    barrier(env)
    return None


def load_own_checkpoint(out: Path, cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The run's last checkpoint, refused when its config differs from ``cfg`` in a setting that matters."""
    checkpoint = load_checkpoint(out)
    if checkpoint is not None:
        diffs = _config_differences(checkpoint[1]["config"], cfg.to_dict())
        if diffs:
            raise ConfigError(
                f"{out}: --resume needs the run's own config; these settings differ: {', '.join(diffs)} "
                f"(see {out / CONFIG_FILE})"
            )
    return checkpoint


def build_datasets(
    cfg: TrainConfig, data: TrainData, frontend: nn.Module, out: Path, env: DistEnv, device: torch.device,
    progress: bool,
) -> tuple[Any, Any]:
    """The training and dev sets: waves, or (``data.feature_cache``) rows of the feature store."""
    from .data.dataset import AudioDataset

    n = cfg.data.num_samples
    if cfg.data.feature_cache:
        from .data.features import FeatureStore, WindowPolicy

        store = FeatureStore(Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "features", frontend)
        policy, codec = WindowPolicy.of(cfg), cfg.augment.codec
        build = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, device=device,
                     progress=env.is_main and progress)

        def build_rows() -> None:
            store.build(data.train_df, policy, train=True, codec=codec, **build)
            if data.dev_df is not None:
                store.build(data.dev_df, policy, **build)

        if env.is_main:
            build_rows()
        barrier(env)
        build_rows()  # a no-op on a shared file system; builds a node-local store otherwise
        train_ds: Any = store.dataset(data.train_df, policy, train=True, seed=cfg.train.seed, codec=codec)
        dev_ds = store.dataset(data.dev_df, policy) if data.dev_df is not None else None
        return train_ds, dev_ds
    train_ds = AudioDataset(
        data.train_df, num_samples=n, train=True, seed=cfg.train.seed, trim_silence=cfg.data.trim_silence
    )
    if cfg.augment.rawboost.enabled:
        train_ds = RawBoostDataset(train_ds, cfg.augment.rawboost, cfg.train.seed)
    dev_ds = (
        AudioDataset(data.dev_df, num_samples=n, train=False, trim_silence=cfg.data.trim_silence)
        if data.dev_df is not None else None
    )
    return train_ds, dev_ds


def build_context(
    cfg: TrainConfig, env: DistEnv, device: torch.device, frontend: nn.Module, model: nn.Module,
    data: TrainData, steps_per_epoch: int, skip_bad: bool, progress: bool,
) -> TrainContext:
    """Model on its device (wrapped in DDP across processes), AdamW, mixed precision and class weights."""
    model.to(device)
    ddp_model: nn.Module = model
    if env.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(  # DIST
            model, device_ids=[env.local_rank] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas)
    amp_dtype = _amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if cfg.loss.balance == "weighted":  # w_c = N / (2 N_c): the expected weight per sample is 1
        weights = len(data.labels) / (2.0 * data.counts)
        class_weight = torch.tensor(weights, dtype=torch.float32, device=device)
    else:
        class_weight = torch.ones(2, dtype=torch.float32, device=device)
    return TrainContext(cfg, env, device, frontend, model, ddp_model, opt, scaler, amp_dtype, class_weight,
                        steps_per_epoch, skip_bad, progress)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (not biases and norms); a fine-tuned front-end part
    (``model.encoder``) and the layer weighting (``model.layer_weights``) get groups of their own at
    ``optim.frontend_lr`` and ``optim.layer_weights_lr``."""
    own = {"encoder.": cfg.optim.frontend_lr, "layer_weights.": cfg.optim.layer_weights_lr}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    parts: list[tuple[list[nn.Parameter], float | None]] = [
        ([p for n, p in named if not n.startswith(tuple(own))], None)]
    parts += [([p for n, p in named if n.startswith(prefix)], lr) for prefix, lr in own.items()]
    groups = []
    for i, (params, lr) in enumerate(parts):
        if i and not params:
            continue
        extra = {"base_lr": lr or cfg.optim.lr} if i else {}
        split = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay, **extra},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra},
        ]
        groups += [g for g in split if g["params"] or not i]  # the model's own two groups always
    return groups


def layer_weights(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, Any] | None:
    """The learned layer weighting of ``model`` (or of its weights ``state``): ``{"layers": [...],
    "weights": [...]}`` (softmax, summing to 1); None when the model has none."""
    mix = getattr(model, "layer_weights", None)
    if mix is None:
        return None
    logits = state["layer_weights.logits"] if state is not None else mix.logits.detach()
    weights = torch.softmax(logits.float().cpu(), dim=0)
    return {"layers": list(mix.names), "weights": [round(float(w), 6) for w in weights]}


def train_one_epoch(
    ctx: TrainContext, state: TrainState, train_ds: Any, labels: np.ndarray, epoch: int
) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """One pass over this process's micro-batches; advances ``state.step``.

    Returns the sums ``(weighted loss, correct, samples)`` over every process and this process's
    skipped files.
    """
    from .data.loader import collate, raise_or_skip

    cfg, env, device, opt, scaler = ctx.cfg, ctx.env, ctx.device, ctx.opt, ctx.scaler
    accumulate, seed = cfg.optim.accumulate, cfg.train.seed
    sched = ctx.schedule
    min_lr = cfg.optim.lr * cfg.optim.min_lr_ratio
    train_ds.set_epoch(epoch)
    batches = epoch_batches(labels, epoch, seed, cfg.loss.balance, cfg.data.batch_size, env, accumulate)
    loader = DataLoader(
        train_ds,
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        worker_init_fn=worker_init,
    )
    ctx.ddp_model.train()
    sums = torch.zeros(3, dtype=torch.float64)  # weighted loss sum, correct, samples
    bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{sched.epochs}", unit="batch",
                       enabled=ctx.show_progress)
    epoch_skipped: list[tuple[int, str]] = []
    for micro, batch in enumerate(bar):
        raise_or_skip(batch["errors"], ctx.skip_bad, epoch_skipped)
        a = micro % accumulate
        if a == 0:  # first micro-batch of an optimiser step
            if state.step >= sched.total_steps:  # a step budget ends inside the last epoch
                break
            lr = lr_at(state.step, sched.total_steps, sched.warmup_steps, cfg.optim.lr, min_lr)
            for group in opt.param_groups:
                base = group.get("base_lr", cfg.optim.lr)  # optim.frontend_lr for a fine-tuned encoder
                group["lr"] = lr if base == cfg.optim.lr else lr_at(
                    state.step, sched.total_steps, sched.warmup_steps, base, base * cfg.optim.min_lr_ratio)
            has_grad = False
        last_micro = a == accumulate - 1
        x = batch["features" if "features" in batch else "wave"]
        if x.shape[0] >= 2:  # BatchNorm needs two samples; only unreadable files make a batch smaller
            x, y = x.to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
            sync = nullcontext() if (last_micro or env.world == 1) else ctx.ddp_model.no_sync()  # DIST
            with sync:
                feats = x if "features" in batch else ctx.frontend(x)
                if cfg.augment.specaugment.enabled:
                    feats = spec_augment(feats, batch["index"], epoch, seed, cfg.augment.specaugment)
                with ctx.autocast():
                    logits = ctx.ddp_model(feats)
                per_sample = F.cross_entropy(
                    logits.float(), y, reduction="none", label_smoothing=cfg.loss.label_smoothing
                )
                loss = (per_sample * ctx.class_weight[y]).mean()
                scaler.scale(loss / accumulate).backward()
            has_grad = True
            sums += torch.tensor(
                [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64
            )
        elif env.world > 1:  # every process must join each gradient all-reduce: stop cleanly instead
            raise NcdetectError(
                f"a batch of process {env.rank} has {x.shape[0]} readable file(s) left; remove the "
                "unreadable files from the manifest for distributed training"
            )
        if last_micro:
            state.step += 1  # the schedule advances even over a step whose files were all unreadable
            if not has_grad:
                continue
            if cfg.optim.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}", lr=f"{lr:.2e}")
    bar.close()
    all_reduce_sum(sums, env)
    return sums, epoch_skipped


def validate(ctx: TrainContext, state: TrainState, dev_ds: Any) -> tuple[float | None, float | None]:
    """Dev EER and its threshold: each process scores a strided share; the sums give every process all
    scores. Unreadable dev files go to ``state.dev_skipped`` (once each over the epochs)."""
    from .evaluate import compute_eer
    from .score import infer_batches

    env = ctx.env
    share = range(env.rank, len(dev_ds), env.world)
    scores = torch.zeros(len(dev_ds), dtype=torch.float64)
    seen = torch.zeros(len(dev_ds), dtype=torch.float64)
    local_skipped: list[tuple[int, str]] = []
    for idx, logit, _ in infer_batches(
        ctx.frontend, ctx.model, dev_ds, share, batch_size=ctx.cfg.data.batch_size, device=ctx.device,
        skip_bad=ctx.skip_bad, skipped=local_skipped, num_workers=ctx.cfg.data.num_workers,
        progress=ctx.show_progress, desc="dev",
    ):
        scores[idx] = torch.from_numpy((logit[:, 1] - logit[:, 0]).astype(np.float64))
        seen[idx] = 1.0
    all_reduce_sum(scores, env)
    all_reduce_sum(seen, env)
    for item in all_gather_list(local_skipped, env):
        if item not in state.dev_skipped:
            state.dev_skipped.append(item)
    ok = seen.numpy() > 0
    dev_labels = dev_ds.labels[ok]
    s = scores.numpy()[ok]
    if (dev_labels == 1).any() and (dev_labels == 0).any():
        return compute_eer(s[dev_labels == 1], s[dev_labels == 0])
    return None, None


def select_model(
    state: TrainState, model: nn.Module, epoch: int, dev_eer: float | None, threshold: float | None,
    select_by: str, has_dev: bool,
) -> None:
    """Keep this epoch's weights when it is the best so far (or always, without dev or by ``last``);
    otherwise count one more epoch without improvement for early stopping."""
    best = state.best["dev_eer"]
    improved = dev_eer is not None and (best is None or dev_eer < best)
    if select_by == "last" or not has_dev or improved:
        state.best = {"epoch": epoch + 1, "dev_eer": dev_eer, "threshold": threshold}
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1


def epoch_record(
    epoch: int, sums: torch.Tensor, dev_eer: float | None, threshold: float | None, lr: float,
    seconds: float, train_seconds: float,
) -> dict[str, Any]:
    n_seen = int(sums[2])
    return {
        "epoch": epoch + 1,
        "train_loss": float(sums[0] / max(n_seen, 1)),
        "train_acc": float(sums[1] / max(n_seen, 1)),
        "dev_eer": dev_eer,
        "dev_threshold": threshold,
        "lr": lr,
        "seconds": round(seconds, 3),
        "samples_per_s": round(n_seen / max(train_seconds, 1e-9), 2),
        "samples": n_seen,
    }


def _start_message(ctx: TrainContext, data: TrainData) -> str:
    counts, dev_df, amp = data.counts, data.dev_df, ctx.amp_dtype
    n_params = sum(p.numel() for p in ctx.model.parameters())
    global_batch = ctx.cfg.data.batch_size * ctx.env.world * ctx.cfg.optim.accumulate
    return (
        f"training {ctx.cfg.model.name} ({n_params / 1e6:.2f} M parameters) on {len(data.train_df)} "
        f"utterances ({counts[1]} bonafide, {counts[0]} spoof), "
        f"dev {len(dev_df) if dev_df is not None else 'none'}; "
        f"device {ctx.device}, {ctx.env.world} process(es), global batch {global_batch}, "
        f"amp {str(amp).replace('torch.', '') if amp else 'off'}"
        + (" (emulated: this CPU has no AMX or avx512_bf16, so it trains slower than float32)"
           if amp == torch.bfloat16 and ctx.device.type == "cpu" and not native_bf16_flags() else "")
    )


def _epoch_message(record: dict[str, Any], seconds: float, epochs: int, marked: bool) -> str:
    dev_txt = f"dev EER {record['dev_eer']:.2f}%" if record["dev_eer"] is not None else "no dev"
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f} "
        f"acc {record['train_acc']:.3f} "
        f"{dev_txt} lr {record['lr']:.2e} {seconds:.1f}s {record['samples_per_s']:.1f} samples/s"
        + (" *" if marked else "")
    )


def final_metrics(ctx: TrainContext, state: TrainState, data: TrainData) -> dict[str, Any]:
    cfg, dev_df, counts = ctx.cfg, data.dev_df, data.counts
    stopped_early = bool(state.history) and state.history[-1]["epoch"] < ctx.schedule.epochs
    return {
        "finished": True,
        "model": cfg.model.name,
        "epochs": state.history,
        "best_epoch": state.best["epoch"],
        "dev_eer_at_best": state.best["dev_eer"],
        "dev_threshold_at_best": state.best["threshold"],
        "selected_by": "dev_eer" if (dev_df is not None and cfg.train.select_by == "dev_eer") else "last",
        "stopped_early": stopped_early,
        "steps": state.step,
        "steps_per_epoch": ctx.steps_per_epoch,
        "n_train": len(data.train_df),
        "n_train_bonafide": int(counts[1]),
        "n_train_spoof": int(counts[0]),
        "n_dev": len(dev_df) if dev_df is not None else 0,
        "skipped": len({i for i, _ in state.skipped}),
        "dev_skipped": len({i for i, _ in state.dev_skipped}),
        "world_size": ctx.env.world,
        "global_batch": cfg.data.batch_size * ctx.env.world * cfg.optim.accumulate,
        "device": str(ctx.device),
        "amp": str(ctx.amp_dtype).replace("torch.", "") if ctx.amp_dtype is not None else "off",
        **({"layer_weights": mix} if (mix := layer_weights(ctx.model, state.best_state)) else {}),
    }


def write_run(
    ctx: TrainContext, state: TrainState, data: TrainData, out: Path, metrics: dict[str, Any], log: RunLog
) -> None:
    """The selected model, the skipped-file records and metrics.json; the checkpoint goes (main process)."""
    from .data.dataset import write_skipped
    from .runs import save_weights

    best_state = state.best_state if state.best_state is not None else ctx.model.state_dict()
    save_weights(best_state, out / MODEL_FILE, model_name=ctx.cfg.model.name)
    if ctx.skip_bad:  # written even when empty: a record that nothing was left out
        write_skipped(sorted(set(state.skipped)), out, data.train_df)
        if data.dev_df is not None:
            write_skipped(sorted(set(state.dev_skipped)), out / "dev_skipped", data.dev_df)
    write_json(out / METRICS_FILE, metrics)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    best = state.best
    sel = (
        f"epoch {best['epoch']} (dev EER {best['dev_eer']:.2f}%)" if best["dev_eer"] is not None
        else f"last epoch ({best['epoch']})"
    )
    log(f"done: kept {sel}; wrote {out / MODEL_FILE}")


# --- the training run --------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    train_manifest: str | Path,
    out: str | Path,
    dev_manifest: str | Path | None = None,
    resume: bool = False,
    skip_bad: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one detector; returns the metrics also written to ``out/metrics.json``.

    An existing run folder is only continued with ``resume`` (from its last completed epoch; a finished
    run is returned as is) and only replaced with ``force``; otherwise it is an error.
    """
    from .runs import build_frontend, build_model, resolve_device

    out = Path(out)
    env = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, env.local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # The global RNGs (model init, dropout); data randomness is keyed by (seed, epoch, index).
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    # Everything that can be wrong with the inputs fails here, before the run folder is touched.
    data = read_train_data(train_manifest, dev_manifest)
    frontend = build_frontend(cfg).to(device)
    model = build_model(cfg, frontend.n_features, frontend)
    steps_per_epoch = _steps_per_epoch(cfg, env, len(data.train_df), train_manifest)

    finished = prepare_run_folder(out, env, resume, force)
    if finished is not None:
        return finished
    checkpoint = load_own_checkpoint(out, cfg) if resume else None
    log = RunLog(out / "train.log" if env.is_main else None, echo=env.is_main)
    if env.is_main:
        write_yaml(out / CONFIG_FILE, cfg.to_dict())
    train_ds, dev_ds = build_datasets(cfg, data, frontend, out, env, device, progress)
    ctx = build_context(cfg, env, device, frontend, model, data, steps_per_epoch, skip_bad, progress)
    if checkpoint is not None:
        state = TrainState.from_checkpoint(checkpoint, model, ctx.opt, ctx.scaler)
        log(f"resuming from epoch {state.epoch} of {ctx.schedule.epochs} ({out / CHECKPOINT_DIR})")
    else:
        state = TrainState()
        if env.is_main:
            log(_start_message(ctx, data))

    for epoch in range(state.epoch, ctx.schedule.epochs):
        if state.bad_epochs >= (cfg.train.patience or math.inf):
            log(f"early stop: no dev-EER improvement for {state.bad_epochs} epochs")
            break
        t_epoch = time.perf_counter()
        sums, epoch_skipped = train_one_epoch(ctx, state, train_ds, data.labels, epoch)
        train_seconds = time.perf_counter() - t_epoch
        state.skipped.extend(all_gather_list(epoch_skipped, env))
        dev_eer, threshold = validate(ctx, state, dev_ds) if dev_ds is not None else (None, None)
        select_model(state, model, epoch, dev_eer, threshold, cfg.train.select_by, dev_ds is not None)
        seconds = time.perf_counter() - t_epoch
        record = epoch_record(epoch, sums, dev_eer, threshold, float(ctx.opt.param_groups[0]["lr"]),
                              seconds, train_seconds)
        state.history.append(record)
        state.epoch = epoch + 1
        marked = state.best["epoch"] == epoch + 1 and dev_ds is not None
        log(_epoch_message(record, seconds, ctx.schedule.epochs, marked))
        if env.is_main:
            save_checkpoint(out, *state.to_checkpoint(model, ctx.opt, ctx.scaler, cfg.to_dict()))
        barrier(env)

    metrics = final_metrics(ctx, state, data)
    if env.is_main:
        write_run(ctx, state, data, out, metrics, log)
    barrier(env)
    return metrics


def _steps_per_epoch(cfg: TrainConfig, env: DistEnv, n_train: int, train_manifest: str | Path) -> int:
    global_batch = cfg.data.batch_size * env.world * cfg.optim.accumulate
    steps = n_train // global_batch
    if steps == 0:
        raise ConfigError(
            f"{train_manifest}: {n_train} training utterances are fewer than one global batch of "
            f"{global_batch} (data.batch_size x processes x optim.accumulate); lower data.batch_size"
        )
    return steps


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA that supports it, else fp16 on CUDA, off on CPU (never bf16
    there: without AMX or avx512_bf16 it is emulated at about a tenth of the float32 speed)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 needs CUDA; on CPU use bf16 or off")
    return torch.bfloat16 if amp == "bf16" else torch.float16
