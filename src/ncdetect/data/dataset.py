"""The torch dataset over a manifest, its collate function and the bad-file policy.

``AudioDataset`` never raises inside a DataLoader worker: an unusable file comes back as an item with
``wave=None`` and ``error="path: reason"``; :func:`collate` removes it from the batch tensors and lists
it in ``batch["errors"]``; the training or scoring loop then calls :func:`raise_or_skip`, which stops
with that one-line error unless the user asked to skip bad files, and :func:`write_skipped` records
what was skipped. Nothing is dropped silently.

Randomness is a pure function of ``(seed, epoch, index)``, so the crops of an epoch are the same
whatever the number of workers or their scheduling, and a resumed run sees the crops it would have
seen. The epoch lives in shared memory, so ``set_epoch`` reaches persistent workers too (call it
before iterating the loader for that epoch).

The feature cache (:class:`FeatureCache`, :class:`CachedFeatureDataset`) lives in
:mod:`ncdetect.data.cache` and is importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import AudioError, NcdetectError
from ..fileio import atomic_path
from .audio import SAMPLE_RATE, WINDOW_SAMPLES, load_audio, load_crop, tile_pad
from .audio import random_crop as _random_crop
from .audio import trim_silence as _trim_silence
from .manifest import label_ids

log = logging.getLogger("ncdetect")

__all__ = [
    "AudioDataset",
    "EpochShuffleSampler",
    "collate",
    "item_rng",
    "make_loader",
    "raise_or_skip",
    "write_skipped",
]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one item in one epoch: independent of workers and of the order of reads."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class _EpochMixin:
    """A shared-memory epoch counter: a plain attribute would be frozen in each persistent worker."""

    def _init_epoch(self) -> None:
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)


class AudioDataset(_EpochMixin, Dataset):
    """Utterances of a manifest as fixed-length 16 kHz waves.

    ``train=True``: a random crop of ``num_samples`` per (seed, epoch, index). Only the crop is read
    from disk: the start is drawn from the header's length, so a one-hour file costs a window of I/O.
    Clips no longer than the window are read whole and tile-padded.
    ``train=False``: the first ``num_samples`` (only those are read), tile-padded when shorter.
    ``trim_silence=True`` cuts leading and trailing silence first, which needs the whole clip: every
    file is then read in full.

    ``ds[i]`` is ``dict(wave=Tensor[num_samples] | None, label=int, index=i, error=None | str)``, plus
    ``length`` (samples of real audio in the window, before tile-padding) when ``return_length``.
    A manifest without a ``label`` column gives ``label=-1``.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        num_samples: int = WINDOW_SAMPLES,
        train: bool = False,
        seed: int = 0,
        trim_silence: bool = False,
        sample_rate: int = SAMPLE_RATE,
        return_length: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, not {num_samples}")
        self.paths: list[str] = manifest["path"].astype(str).tolist()
        self.labels = (
            label_ids(manifest["label"].astype(str)) if "label" in manifest.columns
            else np.full(len(self.paths), -1, dtype=np.int64)
        )
        self.num_samples = int(num_samples)
        self.train = bool(train)
        self.seed = int(seed)
        self.trim_silence = bool(trim_silence)
        self.sample_rate = int(sample_rate)
        self.return_length = bool(return_length)
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item: dict[str, Any] = dict(wave=None, label=int(self.labels[index]), index=index, error=None)
        try:
            wave, length = self._load(index)
            item["wave"] = torch.from_numpy(wave)
            if self.return_length:
                item["length"] = length
        except AudioError as err:
            item["error"] = str(err)
        except Exception as err:  # a worker must not die: the consumer decides (raise_or_skip)
            first = (str(err).splitlines() or [""])[0]
            item["error"] = f"{self.paths[index]}: unexpected {type(err).__name__} while reading ({first})"
        if item["error"] is not None and self.return_length:
            item["length"] = 0
        return item

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        path, n, sr = self.paths[index], self.num_samples, self.sample_rate
        if self.trim_silence:
            x = _trim_silence(load_audio(path, sr))
            if self.train:
                x_win = _random_crop(x, n, item_rng(self.seed, self.epoch, index))
            else:
                x_win = tile_pad(x, n)
            return np.ascontiguousarray(x_win), min(len(x), n)
        if self.train:
            x = load_crop(path, n, item_rng(self.seed, self.epoch, index), sr)
        else:
            x = load_audio(path, sr, duration=n / sr)
        # A header can promise more than the data holds; tile what was there.
        return np.ascontiguousarray(tile_pad(x, n)), min(len(x), n)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; bad ones are left out of the tensors and listed in ``errors``.

    Returns ``dict(wave | features = Tensor[B, ...], label = Tensor[B], index = Tensor[B],
    errors = [(index, message), ...])`` (and ``length`` when the items carry it). When every item is
    bad, the data tensor has shape ``(0,)`` and ``label`` is empty.
    """
    key = "features" if items and "features" in items[0] else "wave"
    good = [it for it in items if it["error"] is None]
    batch: dict[str, Any] = {
        key: torch.stack([it[key] for it in good]) if good else torch.empty(0),
        "label": torch.tensor([it["label"] for it in good], dtype=torch.int64),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.int64),
        "errors": [(int(it["index"]), str(it["error"])) for it in items if it["error"] is not None],
    }
    if items and "length" in items[0]:
        batch["length"] = torch.tensor([it["length"] for it in good], dtype=torch.int64)
    return batch


def raise_or_skip(errors: Sequence[tuple[int, str]], skip_bad: bool, skipped: list[tuple[int, str]]) -> None:
    """Stop at the first bad file unless ``skip_bad``; otherwise log it and append it to ``skipped``."""
    for index, message in errors:
        if not skip_bad:
            raise NcdetectError(f"{message} (use --skip-bad to skip unreadable files)")
        log.warning("skipping %s", message)
        skipped.append((int(index), str(message)))


def write_skipped(
    skipped: Sequence[tuple[int, str]], out_dir: str | Path, manifest: pd.DataFrame | None = None
) -> Path:
    """Write ``out_dir/skipped.csv`` (``index,utt_id,path,reason``), one row per skipped utterance.

    Pass the ``manifest`` the indices refer to for ``utt_id`` and ``path``; without it the path is
    taken from the message (``"path: reason"``) and ``utt_id`` is left empty. A file that failed in
    several epochs appears once. The file is written even when nothing was skipped, as a record.
    """
    rows: dict[int, dict[str, Any]] = {}
    for index, message in skipped:
        index = int(index)
        if index in rows:
            continue
        if manifest is not None and 0 <= index < len(manifest):
            path = str(manifest["path"].iloc[index])
            utt_id = str(manifest["utt_id"].iloc[index]) if "utt_id" in manifest.columns else ""
        else:
            path, utt_id = message.split(": ", 1)[0], ""
        reason = message[len(path) + 2 :] if message.startswith(path + ": ") else message
        rows[index] = dict(index=index, utt_id=utt_id, path=path, reason=reason)
    df = pd.DataFrame([rows[i] for i in sorted(rows)], columns=["index", "utt_id", "path", "reason"])
    out = Path(out_dir) / "skipped.csv"
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return out


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)``; the epoch is the dataset's (``set_epoch``), so a
    resumed run replays the same order."""

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        epoch = int(getattr(self.dataset, "epoch", 0))
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        return iter(rng.permutation(len(self.dataset)).tolist())


def _worker_init(_: int) -> None:
    # Each worker decodes one file at a time; intra-op threads would only oversubscribe the cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with :func:`collate`, persistent workers, and pinned memory only when CUDA is there.

    ``shuffle`` (without a ``sampler``) uses :class:`EpochShuffleSampler`: call
    ``dataset.set_epoch(epoch)`` before each epoch. A given ``sampler`` (e.g. DistributedSampler or a
    weighted sampler) is used as is.
    """
    if sampler is None and shuffle:
        sampler = EpochShuffleSampler(dataset, seed)
    workers = max(0, int(num_workers))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False if sampler is not None else None,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


def __getattr__(name: str) -> Any:
    # The cache module imports this one; resolve its names lazily to avoid an import cycle.
    if name in ("FeatureCache", "CachedFeatureDataset"):
        from . import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
