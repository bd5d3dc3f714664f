"""An optional memory-mapped cache of front-end output, so epochs after the first decode no audio.

Layout of ``<root>/<key>/`` (the key is a hash, see :func:`cache_key`):

* ``features.npy``: ``(N, F, T_cache)`` in ``float32`` (default) or ``float16``, opened with
  ``mmap_mode="r"``. ``float16`` halves the disk and page-cache footprint; log-mel values lie in about
  [-14, 10], where float16 keeps 3 significant digits (error <= 0.004, far below the spread of the
  features). ``benchmarks/bench_data.py`` reports the largest rounding error it saw.
* ``index.csv``: ``utt_id, path, label, valid_frames, error``: the frames covered by real audio
  (before tile-padding) and the one-line error of each utterance that could not be used.
* ``meta.json``: key, front-end config, shapes, dtype; written last.
* ``variants.npy`` (with codec augmentation, ``augment.codec``): ``(N, K, F, T_cache)``, the front-end
  output of K codec/channel-augmented copies of each window (:mod:`ncdetect.data.codec_augment`),
  rendered here once. ``CachedFeatureDataset(train=True)`` reads one of them per epoch with probability
  ``p`` (drawn per seed, epoch and utterance), the clean window otherwise.

A frozen front-end that is expensive (the Whisper encoder) is what the cache is for: it runs once per
utterance and window (and copy), and later epochs cost a memory-mapped read, as for log-mel. A front-end
may name its preferred ``cache_dtype`` (Whisper: ``float16``) and a ``cache_identity`` (the config plus
what it loads, such as the model file's size and time) for the key.

The cache holds a window ``crop_factor`` times longer than the training window (1.5 by default), so
training still draws random crops, along frames, within the real audio of that longer window
(``CachedFeatureDataset(train=True)``). Evaluation takes the first ``frames`` frames, which equal the
front-end over the first ``num_samples`` samples except for the last frame or two, whose analysis window
reaches past the window edge and now sees real audio instead of zero padding. Unlike
:class:`~ncdetect.data.dataset.AudioDataset`, crops never start past that cached window; that is the
price of not decoding.

The build writes into a temporary folder (``.<key>.<host>.<pid>.tmp``) renamed into place when
complete, so a killed build is never taken as finished; a later build removes leftovers of dead
processes on the same host.

The key is a hash of the front-end config, ``num_samples``, the cached window, dtype, trimming,
sample rate and every utterance's ``(utt_id, path, size, mtime)``: a changed, added or removed file
makes a new cache.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import CodecAugmentConfig
from ..errors import NcdetectError
from ..fileio import ensure_writable_dir, open_npy_for_writing, reporting_write_errors, write_json
from ..progress import progress_bar
from .audio import SAMPLE_RATE, WINDOW_SAMPLES
from .dataset import AudioDataset
from .loader import EpochMixin, item_rng, make_loader

CACHE_VERSION = 1
RENDER_BATCH = 256  # windows per batch when codec copies are rendered
DTYPES = ("float32", "float16")


def _file_signature(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def cache_key(
    frontend_config: dict[str, Any],
    manifest: pd.DataFrame,
    num_samples: int,
    window_samples: int,
    dtype: str = "float32",
    trim_silence: bool = False,
    sample_rate: int = SAMPLE_RATE,
    codec: dict[str, Any] | None = None,
) -> str:
    """A hex digest naming the cache for these settings and these files as they are on disk now."""
    h = hashlib.sha256()
    settings = dict(version=CACHE_VERSION, frontend=frontend_config, num_samples=int(num_samples),
                    window_samples=int(window_samples), dtype=dtype, trim_silence=bool(trim_silence),
                    sample_rate=int(sample_rate))
    if codec is not None:  # absent otherwise, so caches built before codec augmentation keep their keys
        settings["codec"] = codec
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    utts = manifest["utt_id"].astype(str) if "utt_id" in manifest.columns else pd.Series([""] * len(manifest))
    for utt, path in zip(utts, manifest["path"].astype(str), strict=True):
        size, mtime = _file_signature(path)
        h.update(f"\n{utt}\t{path}\t{size}\t{mtime}".encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """The cache of ``frontend`` over ``manifest``; :meth:`build` it once, then take :meth:`dataset`.

    ``crop_factor`` (>= 1) sets the cached window, ``round(num_samples * crop_factor)`` samples; use 1
    for evaluation-only caches. ``dtype`` None: the front-end's ``cache_dtype``, else float32.
    ``codec`` (an enabled :class:`~ncdetect.config.CodecAugmentConfig`): also render its K augmented
    copies of every window; training audio only.
    """

    def __init__(
        self,
        root: str | Path,
        frontend: nn.Module,
        manifest: pd.DataFrame,
        num_samples: int = WINDOW_SAMPLES,
        crop_factor: float = 1.5,
        dtype: str | None = None,
        trim_silence: bool = False,
        sample_rate: int = SAMPLE_RATE,
        codec: CodecAugmentConfig | None = None,
    ) -> None:
        if dtype is None:
            dtype = getattr(frontend, "cache_dtype", "float32")
        if dtype not in DTYPES:
            raise NcdetectError(f"feature cache dtype must be one of {DTYPES}, not {dtype!r}")
        if crop_factor < 1:
            raise NcdetectError(f"feature cache crop_factor must be >= 1, not {crop_factor}")
        self.root = Path(root)
        self.frontend = frontend
        self.manifest = manifest.reset_index(drop=True)
        self.num_samples = int(num_samples)
        self.window_samples = round(num_samples * crop_factor)
        self.dtype = dtype
        self.trim_silence = bool(trim_silence)
        self.sample_rate = int(sample_rate)
        self.frames = int(frontend.num_frames(self.num_samples))
        self.cache_frames = int(frontend.num_frames(self.window_samples))
        self.n_features = int(frontend.n_features)
        self.codec = codec if codec is not None and codec.enabled else None
        self.key = cache_key(getattr(frontend, "cache_identity", frontend.config), self.manifest,
                             self.num_samples, self.window_samples, dtype, self.trim_silence,
                             self.sample_rate, self.codec.model_dump(mode="json") if self.codec else None)
        self.path = self.root / self.key

    @property
    def complete(self) -> bool:
        meta = self.path / "meta.json"
        if not meta.is_file():
            return False
        try:
            return json.loads(meta.read_text()).get("key") == self.key
        except (OSError, ValueError):
            return False

    def build(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> FeatureCache:
        """Decode every utterance once and store its features; a no-op when the cache is complete."""
        if self.complete:
            return self
        ensure_writable_dir(self.root)
        self._remove_dead_builds()
        # A failed write (a full disk) is one line naming the cache, and the partial build is removed.
        with reporting_write_errors(self.path):
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.{socket.gethostname()}.{os.getpid()}.",
                                        suffix=".tmp", dir=self.root))
            try:
                self._build_into(tmp, batch_size, num_workers, torch.device(device), progress)
                try:
                    os.rename(tmp, self.path)
                except OSError:
                    # Another process finished the same cache first; its result is the same.
                    if not self.complete:
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return self

    def _build_into(self, tmp: Path, batch_size: int, num_workers: int, device: torch.device,
                    progress: bool) -> None:
        n = len(self.manifest)
        shape = (n, self.n_features, self.cache_frames)
        feats = open_npy_for_writing(tmp / "features.npy", self.dtype, shape, name=self.path / "features.npy")
        variants = None
        if self.codec is not None:
            from .codec_augment import draw_variant, render, utterance_key

            k = self.codec.variants
            variants = open_npy_for_writing(tmp / "variants.npy", self.dtype, (n, k, *shape[1:]),
                                            name=self.path / "variants.npy")
            utt_ids = (self.manifest["utt_id"].astype(str).tolist() if "utt_id" in self.manifest.columns
                       else [""] * n)
        valid = np.zeros(n, dtype=np.int64)
        errors = [""] * n
        ds = AudioDataset(self.manifest, num_samples=self.window_samples, train=False,
                          trim_silence=self.trim_silence, sample_rate=self.sample_rate, return_length=True)
        # Codec copies are rendered one ffmpeg pair per codec setting and batch: large batches amortise the
        # process starts (about 100 ms per copy in batches of 32, a few ms in batches of 256).
        load_batch = max(batch_size, RENDER_BATCH) if variants is not None else batch_size
        loader = make_loader(ds, batch_size=load_batch, shuffle=False, num_workers=num_workers)
        # A copy, so the caller's front-end stays on its device.
        frontend = copy.deepcopy(self.frontend).to(device).eval()
        with torch.no_grad():
            for batch in progress_bar(loader, desc="feature cache", unit="batch", enabled=progress):
                for index, message in batch["errors"]:
                    errors[index] = message
                if batch["label"].numel() == 0:
                    continue
                idx = batch["index"].numpy()
                out = frontend(batch["wave"].to(device))[:, 0].float().cpu().numpy()
                finite = np.isfinite(out).all(axis=(1, 2))
                for j in np.flatnonzero(~finite):
                    errors[idx[j]] = f"{ds.paths[idx[j]]}: front-end output is not finite"
                feats[idx] = out.astype(self.dtype)
                if variants is not None:
                    waves = batch["wave"].numpy()
                    draws = [draw_variant(self.codec, utterance_key(utt_ids[i], ds.paths[i]), j)
                             for i in idx for j in range(k)]
                    copies = render([w for w in waves for _ in range(k)], draws)
                    aug = np.concatenate([
                        frontend(torch.from_numpy(np.stack(copies[i : i + batch_size])).to(device))[:, 0]
                        .float().cpu().numpy() for i in range(0, len(copies), batch_size)])
                    aug = aug.reshape(len(idx), k, *aug.shape[1:])
                    for j in np.flatnonzero(~np.isfinite(aug).all(axis=(1, 2, 3))):
                        errors[idx[j]] = f"{ds.paths[idx[j]]}: front-end output of a codec copy is not finite"
                    variants[idx] = aug.astype(self.dtype)
                lengths = batch["length"].numpy()
                valid[idx] = [min(self.cache_frames, self.frontend.num_frames(int(m))) for m in lengths]
        feats.flush()
        del feats
        if variants is not None:
            variants.flush()
            del variants
        index = pd.DataFrame({
            "utt_id": self.manifest["utt_id"].astype(str) if "utt_id" in self.manifest.columns else "",
            "path": ds.paths,
            "label": ds.labels,
            "valid_frames": valid,
            "error": errors,
        })
        index.to_csv(tmp / "index.csv", index=False)
        write_json(tmp / "meta.json", dict(
            key=self.key, version=CACHE_VERSION, frontend=self.frontend.config, num_samples=self.num_samples,
            window_samples=self.window_samples, frames=self.frames, cache_frames=self.cache_frames,
            n_features=self.n_features, n_items=n, dtype=self.dtype, trim_silence=self.trim_silence,
            sample_rate=self.sample_rate, n_errors=sum(1 for e in errors if e),
            codec=self.codec.model_dump(mode="json") if self.codec else None,
        ))

    def _remove_dead_builds(self) -> None:
        host = socket.gethostname()
        for leftover in self.root.glob(f".{self.key}.{host}.*.tmp"):
            try:
                pid = int(leftover.name[len(f".{self.key}.{host}.") :].split(".", 1)[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(leftover, ignore_errors=True)
            except (ValueError, PermissionError):
                continue

    def dataset(self, train: bool = False, seed: int = 0) -> CachedFeatureDataset:
        """The cached features as a dataset; the cache must have been built."""
        if not self.complete:
            raise NcdetectError(f"{self.path}: feature cache is not built (call build() first)")
        return CachedFeatureDataset(self.path, train=train, seed=seed)


class CachedFeatureDataset(EpochMixin, Dataset):
    """Items ``dict(features=Tensor[1, F, frames] | None, label, index, error)`` from a built cache.

    ``train=True``: a crop of ``frames`` frames starting at a random frame in
    ``[0, valid_frames - frames]`` per (seed, epoch, index); eval: the first ``frames`` frames.
    A cache with codec copies: in training, with probability ``p`` the crop is taken from one of the K
    copies (uniformly, per seed, epoch and index) instead of the clean window; eval reads the clean one.
    The memory map is opened lazily in each process, so workers share the page cache instead of
    receiving a pickled copy of the features.
    """

    def __init__(self, cache_dir: str | Path, train: bool = False, seed: int = 0) -> None:
        self.cache_dir = Path(cache_dir)
        meta_path = self.cache_dir / "meta.json"
        if not meta_path.is_file():
            raise NcdetectError(f"{self.cache_dir}: not a complete feature cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        index = pd.read_csv(self.cache_dir / "index.csv", dtype={"utt_id": str, "path": str, "error": str},
                            keep_default_na=False)
        if len(index) != self.meta["n_items"]:
            raise NcdetectError(f"{self.cache_dir}: index.csv has {len(index)} rows, meta.json says "
                                f"{self.meta['n_items']}")
        self.labels = index["label"].to_numpy(dtype=np.int64)
        self.valid_frames = index["valid_frames"].to_numpy(dtype=np.int64)
        self.errors = index["error"].astype(str).tolist()
        self.paths = index["path"].astype(str).tolist()
        self.frames = int(self.meta["frames"])
        self.n_features = int(self.meta["n_features"])
        feats = self.cache_dir / "features.npy"
        try:
            shape = np.load(feats, mmap_mode="r").shape
        except (OSError, ValueError) as err:
            msg = f"{feats}: unreadable feature cache ({err}); delete its folder to rebuild it"
            raise NcdetectError(msg) from None
        expected = (self.meta["n_items"], self.n_features, self.meta["cache_frames"])
        if tuple(shape) != tuple(expected):
            raise NcdetectError(f"{feats}: shape {tuple(shape)}, meta.json says {tuple(expected)}; "
                                "delete its folder to rebuild it")
        self.train = bool(train)
        self.seed = int(seed)
        self._features: np.ndarray | None = None
        self._variants: np.ndarray | None = None
        codec = self.meta.get("codec")
        self.n_variants = int(codec["variants"]) if codec else 0
        self.p_variant = float(codec["p"]) if codec else 0.0
        if self.n_variants and not (self.cache_dir / "variants.npy").is_file():
            raise NcdetectError(f"{self.cache_dir}: meta.json names codec copies but variants.npy is "
                                "missing; delete the folder to rebuild it")
        self._init_epoch()

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = np.load(self.cache_dir / "features.npy", mmap_mode="r")
        return self._features

    @property
    def variants(self) -> np.ndarray:
        if self._variants is None:
            self._variants = np.load(self.cache_dir / "variants.npy", mmap_mode="r")
        return self._variants

    def variant_of(self, index: int, epoch: int | None = None) -> int:
        """The copy a training epoch reads for ``index``: 0 = the clean window, 1..K = codec copies."""
        if not (self.train and self.n_variants):
            return 0
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, int(index), 0xC0DEC])
        if rng.random() >= self.p_variant:
            return 0
        return 1 + int(rng.integers(self.n_variants))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_features"] = None
        state["_variants"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        label = int(self.labels[index])
        if self.errors[index]:
            return dict(features=None, label=label, index=index, error=self.errors[index])
        start = 0
        if self.train:
            span = max(0, int(self.valid_frames[index]) - self.frames)
            start = int(item_rng(self.seed, self.epoch, index).integers(0, span + 1))
        variant = self.variant_of(index)
        source = self.features[index] if variant == 0 else self.variants[index, variant - 1]
        window = np.array(source[:, start : start + self.frames], dtype=np.float32)
        return dict(features=torch.from_numpy(window).unsqueeze(0), label=label, index=index, error=None)

