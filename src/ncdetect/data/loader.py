"""What every loader of the package shares: per-item randomness, the epoch counter, collate, the bad-file
policy and the DataLoader itself.

Used by :mod:`ncdetect.data.dataset` (waves), :mod:`ncdetect.data.features` (stored features), training
and scoring; it imports none of them, so imports go one way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import NcdetectError

log = logging.getLogger("ncdetect")

__all__ = [
    "EpochMixin",
    "EpochShuffleSampler",
    "collate",
    "item_rng",
    "make_loader",
    "raise_or_skip",
    "worker_init",
]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one item in one epoch: independent of workers and of the order of reads."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class EpochMixin:
    """A shared-memory epoch counter: a plain attribute would be frozen in each persistent worker."""

    def _init_epoch(self) -> None:
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)


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


def worker_init(_: int) -> None:
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
        worker_init_fn=worker_init if workers > 0 else None,
    )
