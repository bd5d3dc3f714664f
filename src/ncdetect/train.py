"""``ncdetect train``: one detector from a manifest, read top to bottom.

The file is laid out like nanoGPT's train.py: helpers first (distributed setup, augmentation, data
order, learning-rate schedule, checkpoints), then :func:`train`, a single loop without framework magic.

Reproducibility and resumption
    Every random choice of an epoch is a pure function of ``(seed, epoch, index)``: the data order
    (:func:`epoch_batches`), the crops (the dataset), RawBoost and SpecAugment (:func:`_aug_rng`). The rest
    of the state (model, optimiser, step counter of the schedule, GradScaler, the global torch / numpy /
    python RNGs, the best model so far and the early-stopping counters) is saved after every epoch in
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
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .config import RawBoostConfig, SpecAugmentConfig, TrainConfig
from .errors import ConfigError, NcdetectError
from .fileio import ensure_writable_dir, reporting_write_errors, write_json, write_text, write_yaml

CHECKPOINT_DIR = "checkpoint"
RUN_ARTIFACTS = (
    "model.safetensors", "config.yaml", "metrics.json", "train.log", "skipped.csv", "dev_skipped",
    CHECKPOINT_DIR,
)
# Settings that may change between a run and its --resume without changing the result.
RESUME_MAY_DIFFER = {("data", "num_workers"), ("train", "threads"), ("train", "device")}


# --- distributed: the only code that knows about several processes ---------------------------------


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    import torch.distributed as dist  # DIST

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():  # DIST
        if use_cuda:
            torch.cuda.set_device(local_rank)  # DIST
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")  # DIST
    return DistEnv(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
            on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)  # DIST
            values.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)  # DIST
    return values


def all_gather_list(items: list, env: DistEnv) -> list:
    """Concatenate a small Python list from every process (used for the skipped-file records)."""
    if env.world == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * env.world
    dist.all_gather_object(parts, items)  # DIST
    return [x for part in parts for x in part]


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier()  # DIST


# --- augmentation --------------------------------------------------------------------------------


def _aug_rng(seed: int, epoch: int, index: int, salt: int) -> np.random.Generator:
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


def _notch_filter(rng: np.random.Generator, gain_db: tuple[float, float], fs: int = 16_000) -> np.ndarray:
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
            rng = _aug_rng(self.seed, self.base.epoch, int(index), 0xB0057)
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
        rng = _aug_rng(seed, epoch, index, 0x5A)
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
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (lr - min_lr)


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
            tqdm.write(f"[train] {msg}", file=sys.stderr)


def _run_state(out: Path) -> str:
    """``new``, ``finished`` (metrics.json says so) or ``unfinished`` (a config or checkpoint, no end)."""
    metrics = out / "metrics.json"
    if metrics.is_file():
        try:
            if json.loads(metrics.read_text(encoding="utf-8")).get("finished"):
                return "finished"
        except json.JSONDecodeError:
            pass
    if (out / "config.yaml").is_file() or (out / CHECKPOINT_DIR).exists():
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


# --- the training loop -------------------------------------------------------------------------------


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
    from .data.dataset import AudioDataset, collate, raise_or_skip, write_skipped
    from .data.manifest import read_manifest
    from .evaluate import compute_eer
    from .runs import build_frontend, build_model, resolve_device, save_weights
    from .score import infer_batches

    out = Path(out)
    env = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, env.local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    # ---- seeds: the global RNGs (model init, dropout); data randomness is keyed by (seed, epoch, index)
    seed = cfg.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    # ---- data
    train_df = read_manifest(train_manifest)
    labels = train_df["label"].map({"spoof": 0, "bonafide": 1}).to_numpy(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        missing = "bonafide" if counts[1] == 0 else "spoof"
        raise NcdetectError(f"{train_manifest}: the training manifest has no {missing} utterances")
    dev_df = read_manifest(dev_manifest) if dev_manifest is not None else None
    if dev_df is not None and dev_df["label"].nunique() < 2:
        raise NcdetectError(f"{dev_manifest}: the dev manifest needs both bonafide and spoof utterances")

    # Everything that can be wrong with the inputs fails here, before the run folder is touched.
    frontend = build_frontend(cfg).to(device)
    model = build_model(cfg, frontend.n_features)
    accumulate = cfg.optim.accumulate
    global_batch = cfg.data.batch_size * env.world * accumulate
    steps_per_epoch = len(train_df) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{train_manifest}: {len(train_df)} training utterances are fewer than one global batch of "
            f"{global_batch} (data.batch_size x processes x optim.accumulate); lower data.batch_size"
        )

    # ---- run folder: new, resumed or refused
    state = _run_state(out)
    if state != "new" and not (resume or force):
        raise NcdetectError(
            f"{out}: holds {'a finished' if state == 'finished' else 'an unfinished'} training run; pass "
            "--resume to continue it, --force to start over, or choose another --out"
        )
    if state == "finished" and resume and not force:
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    barrier(env)
    if env.is_main:
        if force and state != "new":
            for name in RUN_ARTIFACTS:  # only what a run writes: --out may hold other files
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        ensure_writable_dir(out)
    barrier(env)
    checkpoint = load_checkpoint(out) if resume else None
    if checkpoint is not None:
        diffs = _config_differences(checkpoint[1]["config"], cfg.to_dict())
        if diffs:
            raise ConfigError(
                f"{out}: --resume needs the run's own config; these settings differ: {', '.join(diffs)} "
                f"(see {out / 'config.yaml'})"
            )
    log = RunLog(out / "train.log" if env.is_main else None, echo=env.is_main)
    if env.is_main:
        write_yaml(out / "config.yaml", cfg.to_dict())

    # ---- datasets
    n = cfg.data.num_samples
    if cfg.data.feature_cache:
        from .data.cache import FeatureCache

        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "feature_cache"
        cache = FeatureCache(cache_dir, frontend, train_df, num_samples=n, trim_silence=cfg.data.trim_silence)
        build = dict(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, device=device,
                     progress=env.is_main and progress)
        if env.is_main:
            cache.build(**build)
        barrier(env)
        cache.build(**build)  # a no-op on a shared file system; builds a node-local cache otherwise
        train_ds: Any = cache.dataset(train=True, seed=seed)
    else:
        train_ds = AudioDataset(
            train_df, num_samples=n, train=True, seed=seed, trim_silence=cfg.data.trim_silence
        )
        if cfg.augment.rawboost.enabled:
            train_ds = RawBoostDataset(train_ds, cfg.augment.rawboost, seed)
    dev_ds = (
        AudioDataset(dev_df, num_samples=n, train=False, trim_silence=cfg.data.trim_silence)
        if dev_df is not None else None
    )

    # ---- model, optimiser, schedule, mixed precision
    model.to(device)
    ddp_model: nn.Module = model
    if env.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(  # DIST
            model, device_ids=[env.local_rank] if device.type == "cuda" else None
        )
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # biases, norms
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
    )
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    min_lr = cfg.optim.lr * cfg.optim.min_lr_ratio
    amp_dtype = _amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    if cfg.loss.balance == "weighted":  # w_c = N / (2 N_c): the expected weight per sample is 1
        class_weight = torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32, device=device)
    else:
        class_weight = torch.ones(2, dtype=torch.float32, device=device)

    # ---- state that a checkpoint carries
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "dev_eer": None, "threshold": None}
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    skipped: list[tuple[int, str]] = []
    dev_skipped: list[tuple[int, str]] = []
    if checkpoint is not None:
        tensors, meta = checkpoint
        model.load_state_dict(_unprefixed("model.", tensors))
        _load_optimizer_state(opt, tensors, meta["optimizer"])
        if meta["scaler"]:
            scaler.load_state_dict(meta["scaler"])
        _set_rng_state(tensors, meta["rng"])
        best_state = _unprefixed("best.", tensors) or None
        start_epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        best, bad_epochs = meta["best"], meta["bad_epochs"]
        skipped = [tuple(x) for x in meta["skipped"]]
        dev_skipped = [tuple(x) for x in meta["dev_skipped"]]
        log(f"resuming from epoch {start_epoch} of {cfg.optim.epochs} ({out / CHECKPOINT_DIR})")
    elif env.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"training {cfg.model.name} ({n_params / 1e6:.2f} M parameters) on {len(train_df)} utterances "
            f"({counts[1]} bonafide, {counts[0]} spoof), "
            f"dev {len(dev_df) if dev_df is not None else 'none'}; "
            f"device {device}, {env.world} process(es), global batch {global_batch}, "
            f"amp {str(amp_dtype).replace('torch.', '') if amp_dtype else 'off'}"
        )

    for epoch in range(start_epoch, cfg.optim.epochs):
        if bad_epochs >= (cfg.train.patience or math.inf):
            log(f"early stop: no dev-EER improvement for {bad_epochs} epochs")
            break
        t_epoch = time.perf_counter()
        train_ds.set_epoch(epoch)
        batches = epoch_batches(
            labels, epoch, seed, cfg.loss.balance, cfg.data.batch_size, env, accumulate
        )
        loader = DataLoader(
            train_ds,
            batch_sampler=batches,
            num_workers=cfg.data.num_workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
            worker_init_fn=_worker_init,
        )
        ddp_model.train()
        sums = torch.zeros(3, dtype=torch.float64)  # weighted loss sum, correct, samples
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="batch", leave=False,
            disable=not (env.is_main and progress), dynamic_ncols=True,
        )
        epoch_skipped: list[tuple[int, str]] = []
        for micro, batch in enumerate(bar):
            raise_or_skip(batch["errors"], skip_bad, epoch_skipped)
            a = micro % accumulate
            if a == 0:  # first micro-batch of an optimiser step
                lr = lr_at(step, total_steps, warmup_steps, cfg.optim.lr, min_lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                has_grad = False
            last_micro = a == accumulate - 1
            x = batch["features" if "features" in batch else "wave"]
            if x.shape[0] >= 2:  # BatchNorm needs two samples; only unreadable files make a batch smaller
                x, y = x.to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
                sync = nullcontext() if (last_micro or env.world == 1) else ddp_model.no_sync()  # DIST
                with sync:
                    feats = x if "features" in batch else frontend(x)
                    if cfg.augment.specaugment.enabled:
                        feats = spec_augment(feats, batch["index"], epoch, seed, cfg.augment.specaugment)
                    with autocast():
                        logits = ddp_model(feats)
                    per_sample = F.cross_entropy(
                        logits.float(), y, reduction="none", label_smoothing=cfg.loss.label_smoothing
                    )
                    loss = (per_sample * class_weight[y]).mean()
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
                step += 1  # the schedule advances even over a step whose files were all unreadable
                if not has_grad:
                    continue
                if cfg.optim.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}", lr=f"{lr:.2e}")
        bar.close()
        all_reduce_sum(sums, env)
        train_seconds = time.perf_counter() - t_epoch
        skipped.extend(all_gather_list(epoch_skipped, env))

        # ---- dev EER: each process scores a strided share; the sums give every process all scores
        dev_eer = threshold = None
        if dev_ds is not None:
            share = range(env.rank, len(dev_ds), env.world)
            scores = torch.zeros(len(dev_ds), dtype=torch.float64)
            seen = torch.zeros(len(dev_ds), dtype=torch.float64)
            local_skipped: list[tuple[int, str]] = []
            for idx, logit, _ in infer_batches(
                frontend, model, dev_ds, share, batch_size=cfg.data.batch_size, device=device,
                skip_bad=skip_bad, skipped=local_skipped, num_workers=cfg.data.num_workers,
                progress=env.is_main and progress, desc="dev",
            ):
                scores[idx] = torch.from_numpy((logit[:, 1] - logit[:, 0]).astype(np.float64))
                seen[idx] = 1.0
            all_reduce_sum(scores, env)
            all_reduce_sum(seen, env)
            for item in all_gather_list(local_skipped, env):
                if item not in dev_skipped:
                    dev_skipped.append(item)
            ok = seen.numpy() > 0
            dev_labels = dev_ds.labels[ok]
            s = scores.numpy()[ok]
            if (dev_labels == 1).any() and (dev_labels == 0).any():
                dev_eer, threshold = compute_eer(s[dev_labels == 1], s[dev_labels == 0])

        # ---- selection, early stopping, record
        improved = dev_eer is not None and (best["dev_eer"] is None or dev_eer < best["dev_eer"])
        if cfg.train.select_by == "last" or dev_ds is None or improved:
            best = {"epoch": epoch + 1, "dev_eer": dev_eer, "threshold": threshold}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        seconds = time.perf_counter() - t_epoch
        n_seen = int(sums[2])
        record = {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / max(n_seen, 1)),
            "train_acc": float(sums[1] / max(n_seen, 1)),
            "dev_eer": dev_eer,
            "dev_threshold": threshold,
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": round(seconds, 3),
            "samples_per_s": round(n_seen / max(train_seconds, 1e-9), 2),
            "samples": n_seen,
        }
        history.append(record)
        dev_txt = f"dev EER {dev_eer:.2f}%" if dev_eer is not None else "no dev"
        log(
            f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.3f} "
            f"{dev_txt} lr {record['lr']:.2e} {seconds:.1f}s {record['samples_per_s']:.1f} samples/s"
            + (" *" if best["epoch"] == epoch + 1 and dev_ds is not None else "")
        )

        if env.is_main:
            rng_tensors, rng_meta = _rng_state()
            opt_tensors, opt_meta = _optimizer_state(opt)
            tensors = {**_prefixed("model.", model.state_dict()), **opt_tensors, **rng_tensors}
            if best_state is not None:
                tensors.update(_prefixed("best.", best_state))
            meta = {
                "epoch": epoch + 1, "step": step, "history": history, "best": best, "bad_epochs": bad_epochs,
                "optimizer": opt_meta, "scaler": scaler.state_dict(), "rng": rng_meta,
                "skipped": skipped, "dev_skipped": dev_skipped, "config": cfg.to_dict(),
            }
            save_checkpoint(out, tensors, meta)
        barrier(env)
    stopped_early = bool(history) and history[-1]["epoch"] < cfg.optim.epochs

    # ---- the selected model and the record of the run
    metrics = {
        "finished": True,
        "model": cfg.model.name,
        "epochs": history,
        "best_epoch": best["epoch"],
        "dev_eer_at_best": best["dev_eer"],
        "dev_threshold_at_best": best["threshold"],
        "selected_by": "dev_eer" if (dev_ds is not None and cfg.train.select_by == "dev_eer") else "last",
        "stopped_early": stopped_early,
        "n_train": len(train_df),
        "n_train_bonafide": int(counts[1]),
        "n_train_spoof": int(counts[0]),
        "n_dev": len(dev_df) if dev_df is not None else 0,
        "skipped": len({i for i, _ in skipped}),
        "dev_skipped": len({i for i, _ in dev_skipped}),
        "world_size": env.world,
        "global_batch": global_batch,
        "device": str(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
    }
    if env.is_main:
        if best_state is None:
            best_state = model.state_dict()
        save_weights(best_state, out / "model.safetensors", model_name=cfg.model.name)
        if skip_bad:  # written even when empty: a record that nothing was left out
            write_skipped(sorted(set(skipped)), out, train_df)
            if dev_df is not None:
                write_skipped(sorted(set(dev_skipped)), out / "dev_skipped", dev_df)
        write_json(out / "metrics.json", metrics)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        sel = (
            f"epoch {best['epoch']} (dev EER {best['dev_eer']:.2f}%)" if best["dev_eer"] is not None
            else f"last epoch ({best['epoch']})"
        )
        log(f"done: kept {sel}; wrote {out / 'model.safetensors'}")
    barrier(env)
    return metrics


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA that supports it, else fp16 on CUDA, off on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 needs CUDA; on CPU use bf16 or off")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _worker_init(_: int) -> None:
    # A worker decodes one file at a time; more intra-op threads would only oversubscribe the cores.
    torch.set_num_threads(1)
